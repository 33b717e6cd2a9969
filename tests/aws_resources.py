"""Create the template's storage resources in moto from infra/template.yaml itself.

Tests build the bucket and tables from the template's own definitions, so the adapters are
tested against exactly the key schema and settings that get deployed: the two cannot drift.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "infra" / "template.yaml"


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
    """Create each template table (logical id -> table name) with its key schema and billing."""
    for logical_id, table_name in names.items():
        properties = resource_properties(logical_id, "AWS::DynamoDB::Table")
        dynamodb_client.create_table(
            TableName=table_name,
            KeySchema=properties["KeySchema"],
            AttributeDefinitions=properties["AttributeDefinitions"],
            BillingMode=properties["BillingMode"],
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
