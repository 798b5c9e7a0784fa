"""The service's OpenAPI 3.1 description, served at /openapi.json.

Written by hand next to the route table it describes (``app.ROUTES``); a test checks the
two agree, and the error codes are taken from ``errors.HTTP_ERRORS`` so they cannot drift.
"""

from __future__ import annotations

from typing import Any

from frip_engine import __version__
from frip_engine.errors import HTTP_ERRORS

OTHER_CODES = ("route_not_found", "method_not_allowed", "http_error")
B64 = {"type": "string", "contentEncoding": "base64"}
VECTOR = {"type": "array", "items": {"type": "number"}}
PROBE = {
    "image": {**B64, "description": "an image file (JPEG, PNG, ...)"},
    "embedding": {**VECTOR, "description": "an embedding from the engine's extractor"},
    "template": {**B64, "description": "a template in the engine's vendor adapter format"},
}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["additionalProperties"] = False
    if required:
        schema["required"] = required
    return schema


BODIES: dict[str, dict[str, Any]] = {
    "enrol": _obj(
        {
            "subject_id": {"type": "string"},
            "images": {"type": "array", "items": B64, "maxItems": 10},
            "embeddings": {"type": "array", "items": VECTOR},
            "template": PROBE["template"],
            "attributes": {
                "type": "object",
                "description": "up to 16 short name: value pairs (e.g. age, gender), "
                "stored AES-GCM-encrypted under a key in the engine's key store",
            },
        },
        ["subject_id"],
    ),
    "identify": _obj(
        {
            **PROBE,
            "top_k": {"type": "integer", "minimum": 1, "maximum": 100},
            "threshold": {"type": "number", "minimum": -1, "maximum": 1},
            "probe_clusters": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "all"}]},
        }
    ),
    "verify": _obj(
        {
            "subject_id": {"type": "string"},
            **PROBE,
            "threshold": {"type": "number", "minimum": -1, "maximum": 1},
        },
        ["subject_id"],
    ),
    "linkage_create": _obj(
        {
            "subject_id": {"type": "string"},
            "image": PROBE["image"],
            "engines": {"type": "array", "items": {"type": "string"}},
        },
        ["subject_id", "image"],
    ),
}
SUMMARIES = {
    "health": "Liveness (no key needed)",
    "metrics": "Prometheus metrics: routes, statuses, error codes, latency (no key needed)",
    "openapi": "This description",
    "engines_list": "The engines this key may use",
    "engine_show": "One engine's gallery statistics",
    "enrol": "Enrol a subject from images, embeddings or a vendor template",
    "subject_show": "A subject's enrolment record and decrypted attributes",
    "remove": "Erase a subject from the encrypted gallery",
    "identify": "1:N identification, with the Table II timing breakdown",
    "verify": "1:1 verification against a named subject",
    "linkage_create": "Opt-in linkage: enrol one image into each engine with its own extractor",
    "linkage_show": "A linkage consent and where it enrolled",
    "linkage_revoke": "Revoke a linkage: erase the subject from every linked engine",
    "audit_query": "Audit events on this key's engines, and its own events anywhere",
}
OPEN = {"health", "metrics", "openapi"}
QUERIES: dict[str, list[dict[str, Any]]] = {
    "audit_query": [
        {
            "name": "engine",
            "in": "query",
            "schema": {"type": "string"},
            "description": "only this engine (one the key owns, or links into)",
        },
        {
            "name": "after",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "default": 0},
            "description": "events after this sequence number (to page)",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
    ]
}


def describe() -> dict[str, Any]:
    from frip_engine.service.app import ROUTES

    codes = sorted({code for _, code in HTTP_ERRORS.values()} | set(OTHER_CODES))
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, dict[str, Any]] = {}
    for path, handler, method in ROUTES:
        name = handler.__name__
        operation: dict[str, Any] = {
            "operationId": name,
            "summary": SUMMARIES[name],
            "responses": {
                "200" if method != "POST" or name in ("identify", "verify") else "201": {
                    "description": "success"
                },
                "4XX": {
                    "description": "refused",
                    "content": {"application/json": {"schema": error}},
                },
                "5XX": {
                    "description": "failed",
                    "content": {"application/json": {"schema": error}},
                },
            },
        }
        if name not in OPEN:
            operation["security"] = [{"apiKey": []}]
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in ("engine", "subject_id")
            if "{" + p + "}" in path
        ]
        parameters += QUERIES.get(name, [])
        if method in ("POST", "DELETE"):
            parameters += [
                {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,128}$"},
                },
                {
                    "name": "X-Request-Time",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "number"},
                    "description": "Unix time, seconds",
                },
            ]
        if parameters:
            operation["parameters"] = parameters
        if name in BODIES:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": BODIES[name]}},
            }
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "frip-engine linkage service", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj(
                    {
                        "error": _obj(
                            {
                                "code": {"type": "string", "enum": codes},
                                "message": {"type": "string"},
                                "request_id": {"type": ["string", "null"]},
                            },
                            ["code", "message"],
                        )
                    },
                    ["error"],
                )
            },
        },
    }
