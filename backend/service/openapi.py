"""The request bodies and error shapes of the HTTP API as OpenAPI, for `/openapi.json`: the
endpoints read their bodies themselves (multipart streamed, checked by `forms`), so FastAPI
cannot infer them; these are written from the same constants the checks use (`backend.options`),
so a client or a fuzzer can learn the API from the description.

Imports the backend's options only.
"""

from __future__ import annotations

from typing import Any

from backend.options import (
    DETECTORS,
    MAX_BOX_TEXT,
    MAX_BOXES,
    MAX_COORD,
    MAX_FOCAL,
    MIN_FOCAL,
    REFINE_MODES,
    SIDES,
)

_NUMBER = r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?"
BOX_PATTERN = rf"^\s*{_NUMBER}\s*(,\s*{_NUMBER}\s*){{3}}(;\s*{_NUMBER}\s*(,\s*{_NUMBER}\s*){{3}})*$"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

BOX_TEXT: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_BOX_TEXT,
    "pattern": BOX_PATTERN,
    "description": "hand box X0,Y0,X1,Y1 in image pixels (X1 > X0, Y1 > Y0, |v| <= "
    f"{MAX_COORD:.0f}, overlapping the image, sides at most 4x its larger side); several "
    f"joined by ';'; at most {MAX_BOXES} boxes per request",
}

HAND_FIELDS: dict[str, Any] = {
    "side": {"type": "string", "enum": list(SIDES), "default": "auto"},
    "box": {"type": "array", "items": BOX_TEXT, "maxItems": MAX_BOXES},
    "focal": {
        "type": "number",
        "minimum": MIN_FOCAL,
        "maximum": MAX_FOCAL,
        "description": "full-image focal length, pixels (default: EXIF, else a 60 degree view)",
    },
    "detector": {"type": "string", "enum": list(DETECTORS)},
    "refine": {"type": "string", "enum": list(REFINE_MODES)},
}

JOB_TEXT_FIELDS: dict[str, Any] = {
    **HAND_FIELDS,
    "smoothing": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
    "path": {
        "type": "string",
        "maxLength": 4096,
        "description": "an absolute path of a clip on the server's machine, under a folder the "
        "server was started with (--allow-path); else 403 path_not_allowed",
    },
}


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def _errors(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "unreadable input",
        401: "missing or wrong token",
        403: "Origin not allowed, or a path outside --allow-path",
        404: "unknown job",
        408: "the request body stalled",
        409: "result not ready",
        413: "too large (bytes or pixels)",
        415: "not multipart",
        421: "Host names another server",
        422: "bad options",
        429: "too many jobs (Retry-After)",
        503: "not ready or busy (Retry-After)",
    }
    return {
        str(s): {
            "description": descriptions[s],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for s in statuses
    }


COMMON = (401, 403, 408, 413, 421, 503)

PREDICT: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _form(
                    {"image": {"type": "string", "format": "binary"}, **HAND_FIELDS}, ["image"]
                ),
                "encoding": {"box": {"style": "form", "explode": True}},
            }
        },
    },
    "responses": {
        "200": {"description": "hamr.prediction/1", "content": {"application/json": {}}},
        **_errors(400, 415, 422, *COMMON),
    },
}

IMAGE: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _form({"image": {"type": "string", "format": "binary"}}, ["image"])
            }
        },
    },
    "responses": {
        "200": {"description": "the photo upright, RGB", "content": {"image/png": {}}},
        **_errors(400, 415, 422, *COMMON),
    },
}

JOB_JSON: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        **JOB_TEXT_FIELDS,
        "box": {
            "oneOf": [
                BOX_TEXT,
                {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                {
                    "type": "array",
                    "maxItems": MAX_BOXES,
                    "items": {
                        "oneOf": [
                            BOX_TEXT,
                            {
                                "type": "array",
                                "items": {"type": "number"},
                                "minItems": 4,
                                "maxItems": 4,
                            },
                        ]
                    },
                },
            ]
        },
    },
}

JOBS: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _form(
                    {"video": {"type": "string", "format": "binary"}, **JOB_TEXT_FIELDS}, []
                ),
                "encoding": {"box": {"style": "form", "explode": True}},
            },
            "application/x-www-form-urlencoded": {"schema": _form(JOB_TEXT_FIELDS, ["path"])},
            "application/json": {"schema": JOB_JSON},
        },
    },
    "responses": {
        "202": {
            "description": "the job was queued",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string"}},
                    }
                }
            },
        },
        **_errors(400, 415, 422, 429, *COMMON),
    },
}

JOB_ID: dict[str, Any] = {"responses": _errors(404, 401, 403, 421)}
JOB_RESULT: dict[str, Any] = {"responses": _errors(404, 409, 401, 403, 421)}
MODEL: dict[str, Any] = {"responses": _errors(422, 401, 403, 421, 503)}
