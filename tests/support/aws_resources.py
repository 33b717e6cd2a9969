"""Create the template's resources in moto from infra/template.yaml itself.

Tests build the bucket, tables, queues and the bucket's event notifications from the template's
own definitions, so the code is tested against exactly the key schema, queue settings and event
filters that get deployed: the two cannot drift. The bucket and tables are made as
`imgsearch init-aws` makes them (imgsearch.storage.aws_resources); the queues and notifications,
which only the tests emulate, here. `function_environment` gives a function the environment
variables the template gives it, and `http_routes` the API's routes; FAKE_CREDENTIALS the
environment every moto needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgsearch.storage.aws_resources import load_template, resource_properties

# Credentials and region for moto (any values do; moto checks none of them).
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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
