"""The request bodies as JSON Schema, for /openapi.json and /docs only: the routes parse bodies
themselves (``body``), so these document what is accepted; they validate nothing."""

from __future__ import annotations

from typing import Any

ITEM = {"type": "object", "description": "An item: a message ({\"role\", \"content\"}, type \"message\") or any "
        "Responses-API item with a \"type\"", "additionalProperties": True,
        "properties": {"type": {"type": "string"}, "role": {"type": "string",
                       "enum": ["system", "developer", "user", "assistant", "tool"]}}}
METADATA = {"type": "object", "maxProperties": 16, "additionalProperties": {"type": "string", "maxLength": 512},
            "description": "Up to 16 string pairs; keys at most 64 characters"}
ITEMS = {"type": "array", "items": ITEM, "maxItems": 20}

CREATE_CONVERSATION = {"type": "object", "additionalProperties": False,
                       "properties": {"items": ITEMS, "metadata": METADATA}}
UPDATE_CONVERSATION = {"type": "object", "additionalProperties": False, "required": ["metadata"],
                       "properties": {"metadata": METADATA}}
ADD_ITEMS = {"type": "object", "additionalProperties": False, "required": ["items"], "properties": {"items": ITEMS}}
RESPONSE = {"type": "object", "required": ["id"], "additionalProperties": True,
            "properties": {"id": {"type": "string", "description": "the id in the path"},
                           "previous_response_id": {"type": ["string", "null"]},
                           "input": {"description": "the request's input (listed by input_items)"}}}
CHAT = {"type": "object", "additionalProperties": False, "required": ["message"],
        "properties": {"message": {"type": "string", "minLength": 1, "maxLength": 10000},
                       "conversation_id": {"type": ["string", "null"]}}}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route taking ``schema`` as its JSON body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
