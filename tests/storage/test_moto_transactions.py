"""The tests' moto TransactWriteItems (tests/support/dynamodb.py): all or nothing, as DynamoDB's,
with a rollback that copies only the items a transaction touches, never a whole table."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from botocore.exceptions import ClientError

from imgsearch.storage.aws_resources import create_tables

_numbers = itertools.count()


@pytest.fixture
def tables(aws_admin: tuple[Any, Any]) -> tuple[Any, str, str]:
    """The dynamodb client, a fresh catalog table (pk, sk) and a table of a hash key only."""
    _, dynamodb = aws_admin
    number = next(_numbers)
    catalog, plain = f"tx-{number}-catalog", f"tx-{number}-plain"
    create_tables(dynamodb, {"CatalogTable": catalog})
    dynamodb.create_table(
        TableName=plain,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for pk in ("a", "c"):
        dynamodb.put_item(
            TableName=catalog, Item={"pk": {"S": pk}, "sk": {"S": "meta"}, "n": {"N": "1"}}
        )
    dynamodb.put_item(TableName=plain, Item={"pk": {"S": "p"}, "n": {"N": "1"}})
    return dynamodb, catalog, plain


def _everything(dynamodb: Any, *names: str) -> dict[str, list[dict[str, Any]]]:
    return {
        name: sorted(dynamodb.scan(TableName=name)["Items"], key=lambda item: str(item))
        for name in names
    }


def _writes(catalog: str, plain: str) -> list[dict[str, Any]]:
    """An update, a put of a new item, a delete, in both tables."""
    return [
        {
            "Update": {
                "TableName": catalog,
                "Key": {"pk": {"S": "a"}, "sk": {"S": "meta"}},
                "UpdateExpression": "SET n = :two",
                "ExpressionAttributeValues": {":two": {"N": "2"}},
            }
        },
        {"Put": {"TableName": catalog, "Item": {"pk": {"S": "b"}, "sk": {"S": "meta"}}}},
        {"Delete": {"TableName": catalog, "Key": {"pk": {"S": "c"}, "sk": {"S": "meta"}}}},
        {
            "Update": {
                "TableName": plain,
                "Key": {"pk": {"S": "p"}},
                "UpdateExpression": "ADD n :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        },
        {"Put": {"TableName": plain, "Item": {"pk": {"S": "q"}}}},
    ]


def _failing(catalog: str) -> dict[str, Any]:
    """A put whose condition fails: the item it expects does not exist."""
    return {
        "Put": {
            "TableName": catalog,
            "Item": {"pk": {"S": "d"}, "sk": {"S": "meta"}},
            "ConditionExpression": "attribute_exists(pk)",
        }
    }


@pytest.mark.parametrize("failing_at", [0, 2, 5])
def test_a_failed_condition_leaves_every_item_as_it_was(tables, failing_at: int) -> None:
    dynamodb, catalog, plain = tables
    before = _everything(dynamodb, catalog, plain)
    items = _writes(catalog, plain)
    items.insert(failing_at, _failing(catalog))
    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(TransactItems=items)
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [reason["Code"] for reason in refused.value.response["CancellationReasons"]]
    assert reasons == ["None"] * failing_at + ["ConditionalCheckFailed"] + ["None"] * (
        len(items) - failing_at - 1
    )
    assert _everything(dynamodb, catalog, plain) == before


def test_a_transaction_that_holds_applies_every_item(tables) -> None:
    dynamodb, catalog, plain = tables
    dynamodb.transact_write_items(TransactItems=_writes(catalog, plain))
    after = _everything(dynamodb, catalog, plain)
    assert [(item["pk"]["S"], item.get("n", {}).get("N")) for item in after[catalog]] == [
        ("a", "2"),
        ("b", None),
    ]
    assert [(item["pk"]["S"], item.get("n", {}).get("N")) for item in after[plain]] == [
        ("p", "2"),
        ("q", None),
    ]


def test_a_failed_condition_returns_the_old_item_when_asked(tables) -> None:
    dynamodb, catalog, plain = tables
    check = {
        "ConditionCheck": {
            "TableName": catalog,
            "Key": {"pk": {"S": "a"}, "sk": {"S": "meta"}},
            "ConditionExpression": "n = :five",
            "ExpressionAttributeValues": {":five": {"N": "5"}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }
    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(TransactItems=[*_writes(catalog, plain)[1:], check])
    reason = refused.value.response["CancellationReasons"][-1]
    assert reason["Code"] == "ConditionalCheckFailed"
    assert reason["Item"]["n"] == {"N": "1"}
    assert {item["pk"]["S"] for item in _everything(dynamodb, catalog)[catalog]} == {"a", "c"}


def test_one_item_twice_is_refused_and_nothing_is_written(tables) -> None:
    dynamodb, catalog, plain = tables
    before = _everything(dynamodb, catalog, plain)
    items = _writes(catalog, plain)
    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(TransactItems=[*items, items[0]])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert _everything(dynamodb, catalog, plain) == before


def test_no_table_is_copied(tables, monkeypatch) -> None:
    """moto's own rollback deep-copies each table once per item (minutes a transaction at
    thousands of neighbour lists); this one copies the touched items only."""
    from moto.dynamodb.models.table import Table

    def refuse(self: Table, memo: object) -> Table:
        raise AssertionError(f"table {self.name} deep-copied")

    monkeypatch.setattr(Table, "__deepcopy__", refuse, raising=False)
    dynamodb, catalog, plain = tables
    dynamodb.transact_write_items(TransactItems=_writes(catalog, plain))
    with pytest.raises(ClientError):
        dynamodb.transact_write_items(TransactItems=[*_writes(catalog, plain), _failing(catalog)])
