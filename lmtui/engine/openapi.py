"""``GET /openapi.json``: one OpenAPI 3.1 description of everything lmtui's port answers.

Two parts, each written once:

- the router's own paths (``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``, ``/v1/models``, ``/metrics`` and this document), described here;
- the control API under ``/lmtui/v1``, whose command endpoints ``commands.openapi``
  generates from the command structs. Its paths and components are merged in as they are;
  this module only adds the few GET endpoints those structs do not cover and the answers
  every path can give whatever its command (the browser guard's 403 and 415).

The router's request body is described as the router reads it (``router._Head``): a JSON
object whose ``model`` (required, 1-256 characters), ``stream`` (boolean or null) and
``user`` (at most 256 characters, or null) the router checks; every other field goes to
the node untouched, whatever its type, so the schema allows any. A node's own answers pass
through: a 200 is whatever it sent (JSON, or SSE when ``stream`` is true), and its 4xx
answers reach the client as they came (hence ``4XX``). Errors lmtui itself gives are OpenAI
error objects (``errors.error_body``).

Served with the same rules as ``GET /v1/models``: a key when ``[router] api_keys_env`` is
set, the browser guard's Host and Origin rules otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lmtui.engine.codec import encode
from lmtui.engine.commands import openapi as commands_openapi
from lmtui.engine.control_api import PREFIX
from lmtui.engine.errors import UNAUTHORIZED, error_response
from lmtui.engine.router import MAX_NAME

if TYPE_CHECKING:
    from lmtui.engine.router import Router

PATH = "/openapi.json"

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"content": {"application/json": {"schema": _ERROR_REF}}}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds after which the request may succeed",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


#: One event of an SSE answer (the schema describes each event, not the whole stream).
_SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["data"],
}


def _err(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, **_JSON_ERROR, **extra}


#: Answers any path can get from the browser guard (``guard.py``) and the key check.
def _guard_answers(*, post: bool) -> dict[str, Any]:
    out = {
        "401": _err("missing or wrong key (only when keys are configured)"),
        "403": _err(
            "refused by the browser guard: a foreign Origin, or a Host that is not this "
            "lmtui's on a path without a key"
        ),
        "429": _err(
            "rate limited (code rate_limit_exceeded): too many failed authentications "
            "from this address ([router] auth_failure_burst, auth_failure_rate), or over "
            "[router] key_rate_limit / address_rate_limit",
            headers=_RETRY_AFTER,
        ),
    }
    if post:
        out["415"] = _err("the body was not sent as Content-Type: application/json")
    return out


def _routed_request() -> dict[str, Any]:
    name = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
    return {
        "type": "object",
        "description": (
            "The fields the router reads; every other field (messages, prompt, input, "
            "max_tokens, tools, ...) is passed to the node untouched, whatever its type."
        ),
        "properties": {
            "model": {
                **name,
                "description": "a model (or an alias) the cluster has or can load",
            },
            "stream": {
                "type": ["boolean", "null"],
                "description": "true: the answer is an SSE stream; null is no stream",
            },
            "user": {
                "type": ["string", "null"],
                "maxLength": MAX_NAME,
                "description": "the end user, for session affinity and the request log",
            },
        },
        "required": ["model"],
        "additionalProperties": True,
    }


_EXAMPLES = {
    "/v1/chat/completions": {
        "model": "qwen3-8b",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 16,
    },
    "/v1/completions": {"model": "qwen3-8b", "prompt": "Once upon a time", "max_tokens": 16},
    "/v1/embeddings": {"model": "nomic-embed-text", "input": "Hello"},
}


def _routed_operation(path: str, summary: str, max_body_bytes: int) -> dict[str, Any]:
    return {
        "post": {
            "operationId": path.removeprefix("/v1/").replace("/", "_"),
            "summary": summary,
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/RoutedRequest"},
                        "example": _EXAMPLES[path],
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "the node's answer, passed through",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {
                            "schema": _SSE_EVENT,
                            "description": "when stream is true: data events, then "
                            "data: [DONE]; waits in the queue show as SSE comments",
                        },
                    },
                },
                "400": _err(
                    "the body is not a JSON object, not valid UTF-8, nested too "
                    "deeply, or a field the router reads is missing, too long or "
                    "of the wrong type"
                ),
                **_guard_answers(post=True),
                "404": _err("no node has or can load this model (code model_not_found)"),
                "408": _err("the body did not arrive within [router] idle_timeout"),
                "413": _err(
                    f"the body is larger than [router] max_body_bytes ({max_body_bytes} bytes)"
                ),
                "429": _err(
                    "the model's queue is full ([router] queue_depth), or rate limited (too "
                    "many failed authentications from this address, [router] "
                    "key_rate_limit / address_rate_limit; code rate_limit_exceeded)",
                    headers=_RETRY_AFTER,
                ),
                "4XX": {"description": "a node's own client error, passed on as it came"},
                "502": _err(
                    "every node tried failed before its first byte, or answered a "
                    "200 that is not valid JSON (code upstream_error)"
                ),
                "503": _err(
                    "nothing can serve the model now (no healthy node, lmtui stopping)",
                    headers=_RETRY_AFTER,
                ),
                "504": _err("the request waited longer than [router] queue_timeout"),
            },
        }
    }


def _get(
    op_id: str,
    summary: str,
    content: dict[str, Any],
    security: str,
    more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "security": [{security: []}],
            "responses": {
                "200": {"description": "OK", "content": content},
                **_guard_answers(post=False),
                **(more or {}),
            },
        }
    }


_MODEL = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "loaded_on": {"type": "array", "items": {"type": "string"}},
        "available_on": {"type": "array", "items": {"type": "string"}},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "peers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "[[peers]] that may serve it when the cluster cannot in time",
        },
    },
    "required": ["id", "object"],
}


def _control(description: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The control API's paths and components: the command endpoints as ``commands.openapi``
    describes them, the guard's answers added, and its GET endpoints."""
    paths: dict[str, Any] = copy.deepcopy(description["paths"])
    for item in paths.values():
        op = item["post"]
        op["security"] = [{"admin": []}]
        op["responses"]["403"] = _err(
            "the control API is disabled (no admin token on a bind beyond loopback), or "
            "refused by the browser guard (a foreign Origin, or a Host that is not this "
            "lmtui's without an admin token)"
        )
        op["responses"]["415"] = _err("the body was not sent as Content-Type: application/json")
    obj = {"application/json": {"schema": {"type": "object"}}}
    paths[f"{PREFIX}/state"] = _get(
        "state",
        "The cluster's snapshot, the routing strategy and the last 200 events.",
        {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "snapshot": {"type": "object"},
                        "strategy": {"type": "string"},
                        "source": {"type": "string"},
                        "events": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["snapshot", "strategy", "events"],
                }
            }
        },
        "admin",
    )
    paths[f"{PREFIX}/events"] = _get(
        "events",
        "SSE: a snapshot message at once and on every change, an event message per event; "
        "it ends only when lmtui stops.",
        {"text/event-stream": {"schema": _SSE_EVENT}},
        "admin",
    )
    paths[f"{PREFIX}/openapi.json"] = _get(
        "control_openapi",
        "The command endpoints alone, described from their structs.",
        obj,
        "admin",
    )
    processes = _get(
        "processes",
        "The server processes a llamacpp-pool node runs, with their last log lines.",
        {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "node": {"type": "string"},
                        "processes": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["node", "processes"],
                }
            }
        },
        "admin",
        {
            "404": _err("no such node, or one that runs no processes of lmtui's"),
            "502": _err("the node could not be asked"),
        },
    )
    processes["get"]["parameters"] = [
        {"name": "node", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    paths[f"{PREFIX}/nodes/{{node}}/processes"] = processes
    components = copy.deepcopy(description["components"]["schemas"])
    return paths, components


#: The security schemes, and whether lmtui needs each (all, when not told otherwise).
ALL_KEYED = {"apiKey": True, "metrics": True, "admin": True}


def describe(max_body_bytes: int, keyed: Mapping[str, bool] = ALL_KEYED) -> dict[str, Any]:
    """The whole description: the router's paths and the control API's. ``keyed`` says
    which schemes this lmtui needs (``apiKey``: [router] api_keys_env; ``metrics``: an
    API key or the metrics token; ``admin``: the admin token); an operation whose scheme is
    not needed says so with an empty ``security``."""
    control_paths, components = _control(commands_openapi(PREFIX))
    components["RoutedRequest"] = _routed_request()
    components["Model"] = _MODEL
    paths: dict[str, Any] = {
        "/v1/chat/completions": _routed_operation(
            "/v1/chat/completions", "A chat completion, routed to a node.", max_body_bytes
        ),
        "/v1/completions": _routed_operation(
            "/v1/completions", "A text completion, routed to a node.", max_body_bytes
        ),
        "/v1/embeddings": _routed_operation(
            "/v1/embeddings", "Embeddings, routed to a node.", max_body_bytes
        ),
        "/v1/models": _get(
            "models",
            "Every model the cluster has or can load, with the nodes holding it.",
            {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "object": {"const": "list"},
                            "data": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Model"},
                            },
                        },
                        "required": ["object", "data"],
                    }
                }
            },
            "apiKey",
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics; needs an API key or the metrics token when either is set.",
            {"text/plain": {"schema": {"type": "string"}}},
            "metrics",
        ),
        PATH: _get(
            "openapi",
            "This description.",
            {"application/json": {"schema": {"type": "object"}}},
            "apiKey",
        ),
        **control_paths,
    }
    for item in paths.values():
        for op in item.values():
            (scheme,) = op["security"][0]
            if not keyed.get(scheme, True):
                op["security"] = []
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lmtui",
            "version": "1",
            "description": "An OpenAI-compatible router over a cluster of local LLM servers, "
            "and its control API. Each operation's security is what this lmtui needs as "
            "configured: none where no key or token is set.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {**bearer, "description": "a key from [router] api_keys_env"},
                "metrics": {
                    **bearer,
                    "description": "an API key, or the token of [router] metrics_token_env",
                },
                "admin": {**bearer, "description": "the token of [router] admin_token_env"},
            },
        },
    }


def mount(app: web.Application, router: Router, *, admin: bool, metrics: bool) -> None:
    """Serve the description at ``/openapi.json`` on the router's aiohttp app; ``admin``
    and ``metrics``: whether the control API and ``/metrics`` need a token."""
    keyed = {"apiKey": bool(router.api_keys), "metrics": metrics, "admin": admin}
    body = encode(describe(router.max_body_bytes, keyed))

    async def handle(request: web.Request) -> web.Response:
        if not router.authorized(request.headers.get("Authorization", "")):
            router.auth_failures.record(request.remote, "v1")
            return error_response(401, *UNAUTHORIZED)
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, handle)
