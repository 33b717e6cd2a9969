"""DynamoDB on moto, with a TransactWriteItems whose rollback costs what the transaction touches.

moto 5.2.5's `DynamoDBBackend.transact_write_items` deep-copies every table a transaction
names, once per item of the transaction, so that it can restore them if an item fails. With
thousands of stored neighbour lists in the catalog that is minutes a transaction (py-spy:
`transact_write_items` -> `deepcopy`), and in server mode a write from another thread during
the copy makes it fail with a 500 ("dictionary changed size during iteration").
`install_cheap_transactions()` replaces it, in this process, with the same semantics (at most
100 items, one operation an item, no item twice, conditions checked as moto checks them,
`ALL_OLD` on a failed condition, all or nothing, `TransactionCanceledException` with one
reason per item) and a rollback that copies only the items the transaction touches, before
it touches each, and puts them back (or removes what it created) if any item fails. What it
does not restore: moto's stream records (the template's tables have no streams).
The tests (tests/conftest.py's `aws_admin`, the cloud tests) and the cloud benchmarks use it.
"""

from __future__ import annotations

import copy
from typing import Any

# One touched item: its table, keys, and the item as it was (None: it did not exist).
Touched = tuple[Any, Any, Any, Any]


def _key_of(table: Any, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    if op_type != "Put":
        return dict(op["Key"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _apply(backend: Any, op_type: str, op: dict[str, Any], touched: dict[str, Touched]) -> None:
    """One item of a transaction, as moto applies it, after remembering what it replaces."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import ConditionalCheckFailed, MultipleTransactionsException

    if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
        raise ValueError("Unsupported transaction operation")
    table_name = op["TableName"]
    table = backend.get_table(table_name)
    key = _key_of(table, op_type, op)
    marker = f"{table_name}\0{dict(sorted(key.items()))}"
    if marker in touched:
        raise MultipleTransactionsException()
    hash_key, range_key = backend.get_keys_value(table, key)
    current = table.get_item(hash_key, range_key)
    touched[marker] = (table, hash_key, range_key, copy.deepcopy(current))
    condition = op.get("ConditionExpression")
    names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
    if condition is not None and not get_filter_expression(condition, names, values).expr(current):
        wanted = op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
        failed = ConditionalCheckFailed(item=None)
        failed.old_item = current.to_json()["Attributes"] if wanted and current else None
        raise failed
    conditions = {
        "condition_expression": condition,
        "expression_attribute_names": names,
        "expression_attribute_values": values,
    }
    if op_type == "Put":
        backend.put_item(table_name, op["Item"], **conditions)
    elif op_type == "Delete":
        backend.delete_item(table_name, key, **conditions)
    elif op_type == "Update":
        backend.update_item(table_name, key, update_expression=op["UpdateExpression"], **conditions)


def _roll_back(touched: dict[str, Touched]) -> None:
    for table, hash_key, range_key, item in reversed(touched.values()):
        if range_key is not None:
            rows = table.items[hash_key]
            if item is None:
                rows.pop(range_key, None)
                if not rows:
                    del table.items[hash_key]
            else:
                rows[range_key] = item
        elif item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item


def _transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """DynamoDBBackend.transact_write_items with a rollback of the touched items only."""
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    touched: dict[str, Touched] = {}
    errors: list[tuple[Any, Any, Any]] = []  # (code, message, old item) per item
    for item in transact_items:
        try:
            if len(item) > 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(item.items()))
            _apply(self, op_type, op, touched)
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            _roll_back(touched)
            raise
        except ConditionalCheckFailed as failed:
            old = getattr(failed, "old_item", None)
            errors.append(("ConditionalCheckFailed", str(failed.message), old))
        except Exception as error:  # moto reports any other failure as the item's reason
            errors.append((type(error).__name__, str(error), None))
    if any(code is not None for code, _, _ in errors):
        _roll_back(touched)
        raise TransactionCanceledException(errors)


def install_cheap_transactions() -> None:
    """Give moto's DynamoDB backend the cheap rollback (idempotent; this process)."""
    from moto.dynamodb.models import DynamoDBBackend

    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
