"""Create the template's resources in moto from infra/template.yaml itself.

Tests build the bucket, tables, queues and the bucket's event notifications from the template's
own definitions, so the code is tested against exactly the key schema, queue settings and event
filters that get deployed: the two cannot drift. `function_environment` gives a function the
environment variables the template gives it, and `http_routes` the API's routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"


class CloudFormationLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation's short-form tags (!Ref, !Sub, !GetAtt, ...)
    as their long form ({"Ref": ...}, {"Fn::Sub": ...}) instead of failing on them."""


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":  # !GetAtt Resource.Attribute is the list form's shorthand
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


@cache
def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        return yaml.load(file, Loader=CloudFormationLoader)  # a SafeLoader subclass


def resource_properties(logical_id: str, expected_type: str) -> dict[str, Any]:
    resource = load_template()["Resources"][logical_id]
    if resource["Type"] != expected_type:
        raise ValueError(f"{logical_id} is a {resource['Type']}, not a {expected_type}")
    return resource.get("Properties", {})


def create_tables(dynamodb_client: Any, names: dict[str, str]) -> None:
    """Create each template table (logical id -> table name) with its key schema, billing and
    time to live."""
    for logical_id, table_name in names.items():
        properties = resource_properties(logical_id, "AWS::DynamoDB::Table")
        dynamodb_client.create_table(
            TableName=table_name,
            KeySchema=properties["KeySchema"],
            AttributeDefinitions=properties["AttributeDefinitions"],
            BillingMode=properties["BillingMode"],
        )
        ttl = properties.get("TimeToLiveSpecification")
        if ttl:
            dynamodb_client.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": ttl["Enabled"],
                },
            )


def create_bucket(s3_client: Any, name: str, logical_id: str = "ImageBucket") -> None:
    """Create the template's bucket under `name`, with its versioning setting."""
    properties = resource_properties(logical_id, "AWS::S3::Bucket")
    region = s3_client.meta.region_name
    # us-east-1 is the one region S3 refuses an explicit LocationConstraint for.
    placement = (
        {}
        if region == "us-east-1"
        else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    )
    s3_client.create_bucket(Bucket=name, **placement)
    versioning = properties.get("VersioningConfiguration")
    if versioning:
        s3_client.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": versioning["Status"]}
        )


def parameter_default(name: str) -> Any:
    return load_template()["Parameters"][name]["Default"]


def resolve(value: Any, known: Mapping[str, Any]) -> Any:
    """A template value with Refs and GetAtts resolved: parameters to their defaults, names in
    `known` (logical ids, or "Id.Attribute" for GetAtt) to their values. Other intrinsics
    must be in `known` by the logical id of the resource they belong to, or this raises."""
    if isinstance(value, list):
        return [resolve(inner, known) for inner in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"}:
        name = value["Ref"]
        return known[name] if name in known else parameter_default(name)
    if set(value) == {"Fn::GetAtt"}:
        return known[".".join(value["Fn::GetAtt"])]
    if any(name.startswith("Fn::") for name in value):
        raise ValueError(f"cannot resolve {value}")
    return {name: resolve(inner, known) for name, inner in value.items()}


def create_queues(sqs_client: Any, names: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Create the template's queues (logical id -> queue name); returns id -> (url, arn).

    Dead-letter queues first, so that redrive policies can name them.
    """
    queues = {
        logical_id: resource_properties(logical_id, "AWS::SQS::Queue") for logical_id in names
    }
    order = sorted(queues, key=lambda logical_id: "RedrivePolicy" in queues[logical_id])
    created: dict[str, tuple[str, str]] = {}
    for logical_id in order:
        properties = queues[logical_id]
        known = {f"{queue}.Arn": arn for queue, (_, arn) in created.items()}
        attributes = {
            name: str(properties[name])
            for name in ("VisibilityTimeout", "MessageRetentionPeriod", "SqsManagedSseEnabled")
            if name in properties
        }
        if "RedrivePolicy" in properties:
            attributes["RedrivePolicy"] = json.dumps(resolve(properties["RedrivePolicy"], known))
        url = sqs_client.create_queue(QueueName=names[logical_id], Attributes=attributes)[
            "QueueUrl"
        ]
        arn = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        created[logical_id] = (url, arn["Attributes"]["QueueArn"])
    return created


def configure_notifications(
    s3_client: Any, bucket: str, queue_arns: dict[str, str], logical_id: str = "ImageBucket"
) -> None:
    """Give the bucket the template's event notifications (queue logical id -> queue ARN)."""
    properties = resource_properties(logical_id, "AWS::S3::Bucket")
    known = {f"{queue}.Arn": arn for queue, arn in queue_arns.items()}
    configurations = []
    for entry in properties["NotificationConfiguration"]["QueueConfigurations"]:
        rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        configuration = {"QueueArn": resolve(entry["Queue"], known), "Events": [entry["Event"]]}
        if rules:
            configuration["Filter"] = {"Key": {"FilterRules": rules}}
        configurations.append(configuration)
    s3_client.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": configurations}
    )


def function_environment(logical_id: str, known: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables the template gives a function: Globals plus its own.

    Values with intrinsics beyond Ref and GetAtt must be given in `known` by variable name.
    """
    template = load_template()
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    properties = resource_properties(logical_id, "AWS::Serverless::Function")
    variables |= properties.get("Environment", {}).get("Variables", {})
    return {
        name: str(known[name] if name in known else resolve(value, known))
        for name, value in variables.items()
    }


@dataclass(frozen=True)
class Route:
    """One route of the HTTP API, as a function's HttpApi event declares it."""

    method: str
    path: str  # API Gateway's syntax: /api/images/{id}, /{proxy+}
    function: str  # logical id
    authorizer: str | None

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters if this route takes the request, else None."""
        if method != self.method:
            return None
        pattern = re.sub(
            r"\\{(\w+)(\\\+)?\\}",
            lambda m: f"(?P<{m[1]}>.+)" if m[2] else f"(?P<{m[1]}>[^/]+)",
            re.escape(self.path),
        )
        found = re.fullmatch(pattern, path)
        return found.groupdict() if found else None

    @property
    def specificity(self) -> tuple[bool, int]:
        """API Gateway prefers routes without a greedy variable, then longer ones."""
        return ("+}" not in self.path, len(self.path))


def http_routes() -> list[Route]:
    routes = []
    for logical_id, resource in load_template()["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] != "HttpApi":
                continue
            properties = event["Properties"]
            authorizer = properties.get("Auth", {}).get("Authorizer")
            routes.append(Route(properties["Method"], properties["Path"], logical_id, authorizer))
    return routes


def route_for(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route API Gateway would pick for a request, with its path parameters."""
    matches = [
        (route, parameters)
        for route in http_routes()
        if (parameters := route.match(method, path)) is not None
    ]
    if not matches:
        return None
    return max(matches, key=lambda match: match[0].specificity)
