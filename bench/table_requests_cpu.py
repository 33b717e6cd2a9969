"""The client CPU of one DynamoDB batch read through the project's adapter (storage/aws.py
`DynamoTable.get_many`), against moto in server mode (its threads are not this thread's CPU):
a BatchGetItem of 100 neighbour lists read whole, and of the same 100 keys asking for their
distances alone (what the index builder reads of the lists a new image is offered to).

    PYTHONPATH=src .venv/bin/python bench/table_requests_cpu.py --rounds 3

Run it against another checkout for an A/B: PYTHONPATH=../other/src, the same command (a
checkout without `attributes=` measures the whole read only). Prints each round's
milliseconds of this thread's CPU a request (the mean of `--requests`), and the medians.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vector_requests_cpu import free_port, measure

import imgsearch
from imgsearch.storage import Put
from imgsearch.storage.aws import DynamoTable

LISTS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    print(f"imgsearch from {Path(imgsearch.__file__).parent}")

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    port = free_port()
    server = ThreadedMotoServer(port=port, verbose=False)
    server.start()
    try:
        client = boto3.client(  # as storage/aws.py opens it
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            config=Config(max_pool_connections=8, parameter_validation=False),
        )
        client.create_table(
            TableName="catalog",
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        table = DynamoTable(client, "catalog")
        ids = [f"{n:016x}" for n in range(LISTS)]
        # A stored list's shape (catalog._neighbour_attrs): 50 ids, 50 distances, and the
        # expanded vector (1,280 float16 values in base64).
        attrs = {
            "ids": " ".join(ids[:50]),
            "distances": " ".join(f"{0.01 * k:.6f}" for k in range(50)),
            "expanded": "A" * 3416,
        }
        table.put_many([Put(f"image#{i}", "neighbours", attrs, 0) for i in ids])
        keys = [(f"image#{i}", "neighbours") for i in ids]
        kinds: dict[str, Callable[[int], object]] = {
            f"BatchGetItem of {LISTS} lists, whole": lambda _: table.get_many(keys)
        }
        if "attributes" in inspect.signature(table.get_many).parameters:
            kinds[f"BatchGetItem of {LISTS} lists, distances alone"] = lambda _: table.get_many(
                keys, attributes=("distances",)
            )
        measure(kinds, args.rounds, args.requests)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
