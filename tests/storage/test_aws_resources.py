"""The template-reading resource builder that `imgsearch init-aws` and the tests share: what it
says where there is no template (tests/cloud/test_cloud.py makes resources with it in moto)."""

from __future__ import annotations

import pytest

from imgsearch.integrity import UnusableFile
from imgsearch.storage.aws_resources import TEMPLATE_PATH, load_template, resource_properties


def test_the_template_is_read_from_the_checkout() -> None:
    assert TEMPLATE_PATH.is_file()
    keys = resource_properties("CatalogTable", "AWS::DynamoDB::Table")["KeySchema"]
    assert [key["KeyType"] for key in keys] == ["HASH", "RANGE"]
    with pytest.raises(ValueError, match="CatalogTable is a AWS::DynamoDB::Table"):
        resource_properties("CatalogTable", "AWS::S3::Bucket")


def test_no_template_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "infra" / "template.yaml"
    with pytest.raises(UnusableFile, match=r"not found.*run this from the project's checkout"):
        load_template(missing)
