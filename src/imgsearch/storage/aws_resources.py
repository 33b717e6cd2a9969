"""The bucket and tables infra/template.yaml defines, made from the template's own definitions.

For an AWS emulator (`imgsearch init-aws` against a moto server) and the tests: both get the
key schema, billing, time to live and versioning that get deployed, so none can drift from the
template. On AWS the template itself makes them, with encryption, backups and event
notifications besides (docs/deploy.md).

The template is read from the project's checkout, where the CLI that needs it runs from (an
editable install); an installed package has none, and says so.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from imgsearch.integrity import UnusableFile

if TYPE_CHECKING:
    from imgsearch.config import Settings

TEMPLATE_PATH = Path(__file__).resolve().parents[3] / "infra" / "template.yaml"
# Logical ids in the template of what the settings name.
BUCKET = "ImageBucket"
CATALOG_TABLE = "CatalogTable"
FEEDBACK_TABLE = "FeedbackTable"


class CloudFormationLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation's short-form tags (!Ref, !Sub, !GetAtt, ...)
    as their long form ({"Ref": ...}, {"Fn::Sub": ...}) instead of failing on them."""


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":  # !GetAtt Resource.Attribute is the list form's shorthand
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


@cache
def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as data. Raises UnusableFile where there is none (not a checkout)."""
    try:
        with path.open(encoding="utf-8") as file:
            # yaml.load with a SafeLoader subclass: no arbitrary objects
            template: dict[str, Any] = yaml.load(file, Loader=CloudFormationLoader)
    except FileNotFoundError:
        raise UnusableFile(
            f"{path} not found: the AWS resources are made from infra/template.yaml, so run "
            "this from the project's checkout (pip install -e .)"
        ) from None
    return template


def resource_properties(logical_id: str, expected_type: str) -> dict[str, Any]:
    resource = load_template()["Resources"][logical_id]
    if resource["Type"] != expected_type:
        raise ValueError(f"{logical_id} is a {resource['Type']}, not a {expected_type}")
    properties: dict[str, Any] = resource.get("Properties", {})
    return properties


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
        # A table takes its time to live only once it is active.
        dynamodb_client.get_waiter("table_exists").wait(TableName=table_name)
        ttl = properties.get("TimeToLiveSpecification")
        if ttl:
            dynamodb_client.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": ttl["Enabled"],
                },
            )


def create_bucket(s3_client: Any, name: str) -> None:
    """Create the template's bucket under `name`, with its versioning setting."""
    properties = resource_properties(BUCKET, "AWS::S3::Bucket")
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


def create_missing_resources(settings: Settings) -> list[str]:
    """Create the bucket and tables `settings` name, where they do not exist yet, as the
    template defines them. Returns what was created."""
    import boto3
    from botocore.exceptions import ClientError

    load_template()  # no template, nothing made: not half the resources
    s3 = boto3.client("s3")
    dynamodb = boto3.client("dynamodb")
    created = []
    try:
        s3.head_bucket(Bucket=settings.bucket)
    except ClientError:
        create_bucket(s3, settings.bucket)
        created.append(f"bucket {settings.bucket}")
    existing = set(dynamodb.list_tables()["TableNames"])
    tables = {CATALOG_TABLE: settings.catalog_table, FEEDBACK_TABLE: settings.feedback_table}
    missing = {logical_id: name for logical_id, name in tables.items() if name not in existing}
    create_tables(dynamodb, missing)
    created += [f"table {name}" for name in missing.values()]
    return created
