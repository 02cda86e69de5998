"""Answers written straight from plain data that a service already shaped as the route's declared model."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

# As pydantic writes them: UTC times end in Z.
OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def page_answer(page: dict[str, Any]) -> Response:
    """A page of items as JSON, without FastAPI validating and serializing it again through the response model.

    For a page of 100 integrations that second pass cost more than reading them from the database (2.4 ms of
    4 ms); the route still declares the model, so the OpenAPI document is the same.
    """
    return Response(orjson.dumps(page, option=OPTIONS), media_type="application/json")
