"""Authorizer function: checks the API key of requests that change the collection."""

from imgsearch.cloud.authorizer import authorize


def handler(event: dict, context: object) -> dict:
    return authorize(event)
