"""The service's OpenAPI 3.1 description, served at /openapi.json.

Written by hand beside the route table it describes (``app.ROUTES``, passed in: this
module imports no handler); a test checks the two agree, and the error codes are taken
from ``service.errors.HTTP_ERRORS`` so they cannot drift.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from frip_engine import __version__
from frip_engine.profile import NAME_PATTERN
from frip_engine.service.attributes import MAX_ATTRIBUTES, MAX_TEXT
from frip_engine.service.attributes import NAME as ATTRIBUTE_NAME
from frip_engine.service.errors import HTTP_ERRORS
from frip_engine.service.limits import (
    BASE64_PATTERN,
    MAX_DIMENSION,
    MAX_PROBE_CLUSTERS,
    MAX_SEQ,
    MAX_TOP_K,
    SUBJECT_PATTERN,
)
from frip_engine.service.replay import ID_PATTERN
from frip_engine.validate import MAX_SUBJECT_CHARS

if TYPE_CHECKING:
    from frip_engine.service.state import Route, ServiceConfig

OTHER_CODES = (
    "route_not_found",
    "method_not_allowed",
    "http_error",
    "request_timeout",  # the server's connection guard: headers or body too slow (408)
    "too_many_connections",  # ... or one address holding too many connections (429)
)
B64 = {
    "type": "string",
    "contentEncoding": "base64",
    "minLength": 4,
    "pattern": BASE64_PATTERN,
}
VECTOR = {
    "type": "array",
    "items": {"type": "number"},
    "minItems": 1,
    "maxItems": MAX_DIMENSION,
    "description": "exactly as many numbers as the engine's 'dimension' (GET "
    "/v1/engines/{engine}), finite, not all zero",
}
PROBE = {
    "image": {**B64, "description": "an image file (JPEG, PNG, ...), base64"},
    "embedding": {
        **VECTOR,
        "description": "an embedding from the engine's extractor: " + str(VECTOR["description"]),
    },
    "template": {**B64, "description": "a template in the engine's vendor adapter format"},
}
ONE_PROBE = [{"required": [name]} for name in PROBE]  # exactly one of them
# A subject the service creates takes its URL-safe alphabet; one a request names (path,
# verify, responses) may have been enrolled from the CLI with any id the core accepts
# (frip_engine.validate.check_subject_id); one the core refuses is 404 subject_not_found.
SUBJECT = {"type": "string", "pattern": SUBJECT_PATTERN.pattern}
NAMED_SUBJECT = {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS}
ENGINE = {"type": "string", "pattern": NAME_PATTERN.pattern}
THRESHOLD = {"type": "number", "minimum": -1, "maximum": 1}
ATTRIBUTES = {
    "type": "object",
    "maxProperties": MAX_ATTRIBUTES,
    "propertyNames": {"pattern": ATTRIBUTE_NAME.pattern},
    "additionalProperties": {
        "oneOf": [
            {"type": "string", "maxLength": MAX_TEXT},
            {
                "type": "number",
                "description": "a whole number within int64 (-2**63 to 2**63-1) or a finite "
                "float64",
            },
            {"type": "boolean"},
        ]
    },
    "description": f"up to {MAX_ATTRIBUTES} short name: value pairs (e.g. age, gender), stored "
    "AES-GCM-encrypted under a key in the engine's key store",
}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["additionalProperties"] = False
    if required:
        schema["required"] = required
    return schema


def _open(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A response object: these fields at least (servers may add fields later)."""
    return {"type": "object", "properties": properties, "required": required}


BODIES: dict[str, dict[str, Any]] = {
    "enrol": {
        **_obj(
            {
                "subject_id": SUBJECT,
                "images": {"type": "array", "items": B64},
                "embeddings": {"type": "array", "items": VECTOR},
                "template": PROBE["template"],
                "attributes": ATTRIBUTES,
            },
            ["subject_id"],
        ),
        "anyOf": [  # something to enrol from
            {"required": ["images"], "properties": {"images": {"minItems": 1}}},
            {"required": ["embeddings"], "properties": {"embeddings": {"minItems": 1}}},
            {"required": ["template"]},
        ],
    },
    "identify": {
        **_obj(
            {
                **PROBE,
                "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                "threshold": THRESHOLD,
                "probe_clusters": {
                    "oneOf": [
                        {"type": "integer", "minimum": 1, "maximum": MAX_PROBE_CLUSTERS},
                        {"const": "all"},
                    ]
                },
            }
        ),
        "oneOf": ONE_PROBE,
    },
    "verify": {
        **_obj({"subject_id": NAMED_SUBJECT, **PROBE, "threshold": THRESHOLD}, ["subject_id"]),
        "oneOf": ONE_PROBE,
    },
    "linkage_create": _obj(
        {
            "subject_id": SUBJECT,
            "image": PROBE["image"],
            "engines": {
                "type": "array",
                "items": ENGINE,
                "minItems": 1,
                "uniqueItems": True,
                "description": "default: every engine the key owns or links into",
            },
        },
        ["subject_id", "image"],
    ),
}
NUMBER_OR_NULL = {"type": ["number", "null"]}
SUMMARY = _open(
    {
        "engine": {"type": "string"},
        "engine_id": {"type": "string"},
        "subjects": {"type": "integer", "minimum": 0},
        "blocks": {"type": "integer", "minimum": 0},
        "capacity": {"type": "integer", "minimum": 0},
        "dimension": {"type": "integer", "minimum": 1},
        "threshold": {"type": "number"},
        "key_version": {"type": "integer", "minimum": 1},
        "he": {"type": "string"},
        "plugins": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ["engine", "engine_id", "subjects", "blocks", "capacity", "dimension", "threshold"],
)
DECISION = _open(
    {
        "engine": {"type": "string"},
        "matched": {"type": "boolean"},
        "subject_id": {"type": ["string", "null"]},
        "score": NUMBER_OR_NULL,
        "threshold": {"type": "number"},
        "candidates": {
            "type": "array",
            "items": _open(
                {"subject_id": {"type": "string"}, "score": {"type": "number"}},
                ["subject_id", "score"],
            ),
        },
        "timings": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "seconds per stage: Table II's stages plus network, "
            "request_decoding, queue_wait and server_total; batch_size: the probes "
            "scored together with this one (batch_wait: seconds spent on the others)",
        },
        "registrants": {"type": "integer", "minimum": 0},
        "blocks_scored": {"type": "integer", "minimum": 0},
        "probe_bytes": {"type": "integer", "minimum": 0},
        "batch_size": {"type": "integer", "minimum": 1},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
    ["engine", "matched", "subject_id", "score", "threshold", "candidates", "timings"],
)
STRINGS = {"type": "array", "items": {"type": "string"}}
BY_ENGINE = {"type": "object", "additionalProperties": {"type": "string"}}
EVENT = _open(
    {
        "seq": {"type": "integer", "minimum": 1},
        "at": {"type": "string"},
        "actor": {"type": "string"},
        "key_id": {"type": ["string", "null"]},
        "action": {"type": "string"},
        "engine": {"type": ["string", "null"]},
        "subject_id": {"type": ["string", "null"]},
        "outcome": {"type": "object"},
        "request_id": {"type": ["string", "null"]},
        "hash": {"type": "string"},
    },
    ["seq", "at", "actor", "action", "outcome", "hash"],
)
RESPONSES: dict[str, dict[str, Any]] = {
    "health": _open(
        {
            "status": {"const": "ok"},
            "version": {"type": "string"},
            "engines_open": {"type": "integer", "minimum": 0},
        },
        ["status", "version", "engines_open"],
    ),
    "openapi": {"type": "object", "required": ["openapi", "paths"]},
    "engines_list": _open({"engines": {"type": "array", "items": SUMMARY}}, ["engines"]),
    "engine_show": {
        **SUMMARY,
        "properties": {**SUMMARY["properties"], "adapter": {"type": ["string", "null"]}},
    },
    "enrol": _open(
        {"engine": {"type": "string"}, "subject_id": SUBJECT, "notes": STRINGS},
        ["engine", "subject_id", "notes"],
    ),
    "subject_show": _open(
        {
            "engine": {"type": "string"},
            "subject_id": NAMED_SUBJECT,
            "enrolled_at": {"type": "string"},
            "images": {"type": "integer", "minimum": 0},
            "attributes": {"type": "object"},
        },
        ["engine", "subject_id", "enrolled_at", "attributes"],
    ),
    "remove": _open(
        {"engine": {"type": "string"}, "subject_id": NAMED_SUBJECT, "removed": {"const": True}},
        ["engine", "subject_id", "removed"],
    ),
    "identify": DECISION,
    "verify": DECISION,
    "linkage_create": _open(
        {"subject_id": SUBJECT, "enrolled": BY_ENGINE, "failed": BY_ENGINE, "codes": BY_ENGINE},
        ["subject_id", "enrolled", "failed", "codes"],
    ),
    "linkage_show": _open(
        {
            "subject_id": SUBJECT,
            "state": {"enum": ["active", "revoking"]},
            "created_at": {"type": "string"},
            "engines": {
                "type": "object",
                "additionalProperties": _open(
                    {"state": {"type": "string"}, "detail": {"type": "string"}},
                    ["state", "detail"],
                ),
            },
        },
        ["subject_id", "state", "created_at", "engines"],
    ),
    "linkage_revoke": _open(
        {"subject_id": SUBJECT, "removed": STRINGS, "absent": STRINGS},
        ["subject_id", "removed", "absent"],
    ),
    "audit_query": _open({"events": {"type": "array", "items": EVENT}}, ["events"]),
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
            "schema": ENGINE,
            "description": "only this engine (one the key owns, or links into)",
        },
        {
            "name": "after",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0},
            "description": "events after this sequence number (to page)",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        },
    ]
}


def _bodies(config: ServiceConfig) -> dict[str, dict[str, Any]]:
    """The request bodies with this server's own per-enrolment limits filled in."""
    enrol = copy.deepcopy(BODIES["enrol"])
    enrol["properties"]["images"]["maxItems"] = config.max_images
    enrol["properties"]["embeddings"]["maxItems"] = config.max_embeddings
    return {**BODIES, "enrol": enrol}


def describe(config: ServiceConfig, routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a service running with ``config`` and the route table
    ``routes`` ((path, handler, method) rows; each handler's name is its operation)."""
    codes = sorted({code for _, code in HTTP_ERRORS.values()} | set(OTHER_CODES))
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    bodies = _bodies(config)
    paths: dict[str, dict[str, Any]] = {}
    for path, handler, method in routes:
        name = handler.__name__
        success = "201" if name in ("enrol", "linkage_create") else "200"
        content = (
            {"text/plain": {"schema": {"type": "string"}}}
            if name == "metrics"
            else {"application/json": {"schema": RESPONSES[name]}}
        )
        operation: dict[str, Any] = {
            "operationId": name,
            "summary": SUMMARIES[name],
            "responses": {
                success: {"description": "success", "content": content},
                "4XX": {"description": "refused", "content": error},
                "5XX": {"description": "failed", "content": error},
            },
        }
        if name not in OPEN:
            operation["security"] = [{"apiKey": []}]
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": schema}
            for p, schema in (("engine", ENGINE), ("subject_id", NAMED_SUBJECT))
            if "{" + p + "}" in path
        ]
        parameters += QUERIES.get(name, [])
        if method in ("POST", "DELETE"):
            parameters += [
                {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": ID_PATTERN.pattern},
                    "description": "fresh per request and key; spent only by a success",
                },
                {
                    "name": "X-Request-Time",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "number"},
                    "description": "the request's Unix time, seconds; refused (400 "
                    f"bad_request_id) if more than {config.replay_window:g} s from the "
                    "server's clock",
                },
            ]
        if parameters:
            operation["parameters"] = parameters
        if name in bodies:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": bodies[name]}},
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
