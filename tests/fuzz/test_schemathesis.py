"""schemathesis against a live lmtui: every path of ``GET /openapi.json`` fuzzed from its own
description (valid and invalid bodies, parameters, headers), over loopback HTTP.

Every answer must conform to the description (status code, content type, body schema,
headers) and none may be a 5xx, with one documented exception: 502/503/504 in the
router's own error shape (``upstream_error``, ``service_unavailable``, ``timeout``) when
the cause is a node or the cluster, not the request. With healthy simulated nodes those
should not happen at all, so each one seen is also counted and the count must stay small
(a node bug that a fuzzed body triggers is the node's; lmtui's part is to say so cleanly).
A 500 is never allowed: lmtui gives one only for a bug of its own.

Left out: ``GET /lmtui/v1/events``, an SSE stream that ends only when lmtui stops (the
control API's tests read it); and schemathesis itself leaves out ``GET /openapi.json``,
the document it loaded, whose key rule is tested at the end of this file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from _fuzzing import LiveThread, live
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from lmtui.config import RouterConfig
from lmtui.engine.commands import COMMANDS
from lmtui.engine.commands import openapi as commands_openapi
from lmtui.engine.router import MAX_NAME

#: Answers a node or the cluster causes, documented, never the request's fault.
NODE_STATUSES = {502: "upstream_error", 503: "service_unavailable", 504: "timeout"}
#: Answers seen, by path and status (printed with -s at the end of the module).
STATUSES: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def lmtui() -> Iterator[LiveThread]:
    with LiveThread() as server:
        yield server
    print("\nschemathesis answers by path and status:", dict(sorted(STATUSES.items())))


@pytest.fixture(scope="module")
def api_schema(lmtui: LiveThread) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{lmtui.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")

KEY, ADMIN = "fuzz-api-key", "fuzz-admin-token"


@pytest.fixture(scope="module")
def keyed_lmtui() -> Iterator[LiveThread]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTUI_FUZZ_KEY", KEY)
        mp.setenv("LMTUI_FUZZ_ADMIN", ADMIN)
        # schemathesis sends many requests without a key on purpose: lmtui's limit on failed
        # authentications (20, then one per 5 s) would answer them 429 instead of the 401
        # the checks expect (tests/engine/test_ratelimit.py covers that limit).
        router = RouterConfig(
            api_keys_env=["LMTUI_FUZZ_KEY"],
            admin_token_env="LMTUI_FUZZ_ADMIN",
            auth_failure_burst=1_000_000,
        )
        with LiveThread(router=router) as server:
            yield server


@pytest.fixture(scope="module")
def keyed_api_schema(keyed_lmtui: LiveThread) -> schemathesis.BaseSchema:
    # The keys as schemathesis' own auth for each scheme, so its auth checks know them as
    # the real ones (and try the requests again without them, and with made-up ones).
    auth = {"apiKey": {"bearer": KEY}, "metrics": {"bearer": KEY}, "admin": {"bearer": ADMIN}}
    return schemathesis.openapi.from_url(
        f"{keyed_lmtui.url}/openapi.json",
        headers={"Authorization": f"Bearer {KEY}"},
        config=SchemathesisConfig.from_dict({"auth": {"openapi": auth}}),
    )


keyed_schema = schemathesis.pytest.from_fixture("keyed_api_schema")


# /lmtui/v1/events never ends: a request to it would wait out its timeout.
@schema.exclude(path="/lmtui/v1/events").parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_conforms_and_none_is_a_server_error(
    case: schemathesis.Case, lmtui: LiveThread
) -> None:
    _fuzz(case, lmtui)


def _fuzz(
    case: schemathesis.Case, lmtui: LiveThread, headers: dict[str, str] | None = None
) -> None:
    _call_and_check(case, lmtui, headers)
    body = case.body
    known = KNOWN_MODEL.get(case.path)
    if known is not None and isinstance(body, dict) and isinstance(body.get("model"), str):
        # A fuzzed model name is almost never one the cluster has (a 404 before any node
        # is asked): send the same body again for a model it has, so the fuzzed fields
        # (stream, user, and whatever else) go all the way to a node and back.
        case.body = {**body, "model": known}
        _call_and_check(case, lmtui, headers)


#: A model the simulated cluster serves, per routed path.
KNOWN_MODEL = {"/v1/chat/completions": "m1", "/v1/completions": "m1", "/v1/embeddings": "e1"}


@pytest.mark.slow
@keyed_schema.exclude(path="/lmtui/v1/events").parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_with_keys_every_path_wants_its_own(
    case: schemathesis.Case, keyed_lmtui: LiveThread
) -> None:
    """The same with an API key and an admin token configured: every operation says which
    it needs, answers 401 without it (schemathesis' ignored_auth check sends the request
    again without the key), and serves with it."""
    _fuzz(case, keyed_lmtui)


def _call_and_check(
    case: schemathesis.Case, lmtui: LiveThread, headers: dict[str, str] | None = None
) -> None:
    response = case.call(base_url=lmtui.url, timeout=20, headers=headers)
    STATUSES[(case.path, response.status_code)] += 1
    excluded = [schemathesis.checks.not_a_server_error]
    if case.path.startswith("/lmtui/v1/") and _blank(case.body):
        # The control API reads a blank body as {} (a command with no fields to give,
        # such as rebalance, needs none); schemathesis counts whitespace as invalid JSON.
        excluded.append(schemathesis.checks.negative_data_rejection)
        assert response.status_code != 200 or case.path == "/lmtui/v1/rebalance", response.text
    case.validate_response(response, excluded_checks=excluded, headers=headers)
    if response.status_code >= 500:
        assert response.status_code in NODE_STATUSES, (response.status_code, response.text)
        assert response.json()["error"]["code"] == NODE_STATUSES[response.status_code]


def _blank(body: object) -> bool:
    return isinstance(body, str | bytes) and not body.strip()


async def test_the_description_holds_both_apis_and_needs_a_key_like_v1_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMTUI_KEY", "k1")
    async with live(router=RouterConfig(api_keys_env=["LMTUI_KEY"])) as (_c, engine):
        url = f"{engine.router_url}/openapi.json"
        async with httpx.AsyncClient() as h:
            assert (await h.get(url)).status_code == 401
            assert (await h.get(url, headers={"Authorization": "Bearer no"})).status_code == 401
            r = await h.get(url, headers={"Authorization": "Bearer k1"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    # The control API's command endpoints are the ones its structs describe, not a copy.
    control = commands_openapi("/lmtui/v1")
    for path in control["paths"]:
        assert path in doc["paths"], path
    assert {f"/lmtui/v1/{name}" for name in COMMANDS} <= set(doc["paths"])
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        op = doc["paths"][path]["post"]
        assert {"400", "401", "403", "404", "413", "415", "429", "502", "503"} <= set(
            op["responses"]
        )
    body = doc["components"]["schemas"]["RoutedRequest"]
    assert body["properties"]["model"]["maxLength"] == MAX_NAME
