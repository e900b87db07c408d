"""llama.cpp parsers against payloads captured from a real llama-server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lmtui.backends import BackendBadResponse
from lmtui.backends._common import error_message
from lmtui.backends.llamacpp_parse import (
    RouterProps,
    is_limit_answer,
    is_loading_answer,
    is_router_payload,
    is_router_props,
    model_name,
    parse_models,
    parse_props,
    parse_router_props,
    parse_slots,
)
from lmtui.backends.prom import llamacpp_metrics, parse_prometheus, sum_metrics
from lmtui.core.model import InstanceState

Load = Callable[[str], Any]
LOADING_503 = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def test_single_props(llama_payload: Load) -> None:
    props = parse_props(llama_payload("single/props.json"))
    assert props.total_slots == 2
    assert props.model_name == "gemma.gguf"
    assert props.n_ctx == 1024
    assert props.is_sleeping is False
    assert props.build_info == "b1-0c1e570"


def test_router_props_names_the_model(llama_payload: Load) -> None:
    props = parse_props(llama_payload("router/props-ulysses.json"))
    assert props.model_name == "ulysses"
    assert props.model_path == "/srv/models/ulysses.gguf"
    assert props.total_slots == 2


def test_props_without_alias_uses_the_file_name() -> None:
    assert parse_props({"model_path": "/m/qwen-7b.gguf"}).model_name == "qwen-7b.gguf"


@pytest.mark.parametrize(
    ("name", "busy"), [("single/slots-idle.json", 0), ("single/slots-busy.json", 1)]
)
def test_slots_busy_count(llama_payload: Load, name: str, busy: int) -> None:
    slots = parse_slots(llama_payload(name))
    assert (slots.total, slots.busy, slots.n_ctx) == (2, busy, 1024)


def test_slots_of_older_builds_use_state() -> None:
    slots = parse_slots([{"id": 0, "state": 1}, {"id": 1, "state": 0}, {"id": 2, "state": 0}])
    assert (slots.total, slots.busy) == (3, 1)


@pytest.mark.parametrize("payload", [{"slots": []}, [1, 2], "x"])
def test_slots_garbage_is_bad_response(payload: Any) -> None:
    with pytest.raises(BackendBadResponse):
        parse_slots(payload)


def test_single_v1_models_meta(llama_payload: Load) -> None:
    payload = llama_payload("single/v1-models.json")
    assert not is_router_payload(payload)
    (model,) = parse_models(payload)
    assert model.id == "gemma.gguf"
    assert model.size_bytes == 246587904
    assert model.n_ctx_train == 32768
    assert model.status is None and model.state is None


def test_router_models_before_any_load(llama_payload: Load) -> None:
    payload = llama_payload("router/models-none-loaded.json")
    assert is_router_payload(payload)
    models = parse_models(payload)
    assert [m.id for m in models] == ["eternal", "ulysses"]
    assert all(m.state is None and m.size_bytes is None for m in models)
    assert all(m.parallel == 2 for m in models)  # from --parallel 2 in status.args


def test_router_models_loading_then_loaded(llama_payload: Load) -> None:
    loading = {m.id: m for m in parse_models(llama_payload("router/models-loading.json"))}
    assert loading["ulysses"].state is InstanceState.LOADING
    assert loading["eternal"].state is None
    loaded = {m.id: m for m in parse_models(llama_payload("router/models-one-loaded.json"))}
    assert loaded["ulysses"].state is InstanceState.LOADED
    assert loaded["ulysses"].size_bytes == 246587904
    assert loaded["ulysses"].n_ctx == 1024


def test_router_autoload_with_models_max_1_swaps(llama_payload: Load) -> None:
    models = {
        m.id: m for m in parse_models(llama_payload("router/models-after-autoload-max1.json"))
    }
    assert models["eternal"].state is InstanceState.LOADED
    assert models["ulysses"].state is None
    after = parse_models(llama_payload("router/models-after-unload.json"))
    assert all(m.state is None for m in after)


def test_router_v1_models_has_router_shape_too(llama_payload: Load) -> None:
    assert is_router_payload(llama_payload("router/v1-models.json"))


def test_router_sleeping_and_failed_states() -> None:
    payload = {
        "data": [
            {"id": "a", "status": {"value": "sleeping"}},
            {"id": "b", "status": {"value": "unloaded", "failed": True, "exit_code": 137}},
            {"id": "c", "status": {"value": "downloading"}},
        ]
    }
    a, b, c = parse_models(payload)
    assert a.state is InstanceState.LOADED  # wakes on the next request: still routable
    assert b.state is InstanceState.FAILED and b.error is not None and "137" in b.error
    # A download is a load in progress: loading, so nobody posts another load for it.
    assert c.state is InstanceState.LOADING


def test_router_props_give_the_instance_limit(llama_payload: Load) -> None:
    raw = llama_payload("router/props-router.json")
    assert is_router_props(raw)
    props = parse_router_props(raw)
    assert props == RouterProps(max_instances=1, models_autoload=True, build_info="b1-0c1e570")
    # --models-max 0 means no limit, and the server sends it as given.
    assert parse_router_props({**raw, "max_instances": 0}).max_instances is None
    # A model's own /props is not the router's.
    assert not is_router_props(llama_payload("router/props-ulysses.json"))
    assert not is_router_props(llama_payload("single/props.json"))


def test_load_at_the_limit_is_recognised(llama_payload: Load) -> None:
    body = llama_payload("router/load-at-limit-while-busy.json")
    assert is_limit_answer(500, body)
    assert not is_limit_answer(400, body)
    assert not is_limit_answer(500, llama_payload("router/error-unknown-model.json"))
    assert not is_limit_answer(500, None)


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("../models/Qwen3-8B-Q4_K_M.gguf", "Qwen3-8B-Q4_K_M"),
        ("/srv/models/gemma.gguf", "gemma"),
        ("gemma.gguf", "gemma"),
        ("C:\\models\\Phi-4.GGUF", "Phi-4"),
        ("gemma", "gemma"),
        ("./gemma-270m", "gemma-270m"),
        ("qwen/qwen3-8b", "qwen/qwen3-8b"),
    ],
)
def test_single_model_ids_are_named_by_file(model_id: str, name: str) -> None:
    assert model_name(model_id) == name


def test_empty_router_is_still_a_router() -> None:
    assert is_router_payload({"data": [], "object": "list"})
    assert not is_router_payload({"data": [], "models": [], "object": "list"})


@pytest.mark.parametrize("payload", [[], {"data": None}, {"data": [{"name": "x"}]}, None])
def test_models_garbage_is_bad_response(payload: Any) -> None:
    with pytest.raises(BackendBadResponse):
        parse_models(payload)


def test_loading_answer() -> None:
    assert is_loading_answer(503, LOADING_503)
    assert is_loading_answer(503, {"error": {"code": 503, "message": "Loading model"}})
    assert not is_loading_answer(200, {"status": "ok"})
    assert not is_loading_answer(503, {"error": {"message": "engine dead", "type": "server"}})


def test_single_metrics_idle_and_busy(llama_payload: Load) -> None:
    idle = llamacpp_metrics(parse_prometheus(llama_payload("single/metrics.txt")))
    assert idle.requests_processing == 0
    assert idle.predicted_tokens_total == 0
    busy = llamacpp_metrics(parse_prometheus(llama_payload("single/metrics-busy.txt")))
    assert busy.requests_processing == 1
    assert busy.requests_waiting == 0
    assert busy.prompt_tokens_total == 59
    assert busy.predicted_tokens_total == 36
    assert busy.predicted_tokens_per_second == pytest.approx(55.9906)


def test_router_metrics_per_model_and_summed(llama_payload: Load) -> None:
    one = llamacpp_metrics(parse_prometheus(llama_payload("router/metrics-ulysses.txt")))
    assert one.requests_processing == 0
    busy = llamacpp_metrics(parse_prometheus(llama_payload("single/metrics-busy.txt")))
    total = sum_metrics([one, busy, busy])
    assert total.requests_processing == 2
    assert total.predicted_tokens_total == 72


def test_router_metrics_without_model_is_bad_response(llama_payload: Load) -> None:
    # The router answers /metrics without ?model= with a JSON error, not Prometheus text.
    with pytest.raises(BackendBadResponse):
        parse_prometheus(llama_payload("router/metrics-no-model.txt"))


def test_error_bodies_give_the_servers_message(llama_payload: Load) -> None:
    assert error_message(llama_payload("router/error-unknown-model.json")) == (
        "model 'nosuch' not found"
    )
    assert "parse error" in (error_message(llama_payload("single/error-bad-json.json")) or "")
    assert error_message(llama_payload("router/load-response.json")) is None


@pytest.mark.parametrize(
    "path", ["single/metrics.txt", "single/metrics-busy.txt", "router/metrics-ulysses.txt"]
)
def test_parsing_only_the_families_read_gives_the_same_metrics(
    llama_payload: Callable[[str], Any], path: str
) -> None:
    from lmtui.backends.prom import LLAMACPP_NAMES, llamacpp_metrics, parse_prometheus

    text = llama_payload(path)
    assert llamacpp_metrics(parse_prometheus(text, LLAMACPP_NAMES)) == llamacpp_metrics(
        parse_prometheus(text)
    )


@pytest.mark.parametrize(
    "garbage", ["<html>502 Bad Gateway</html>", "not metrics at all {{", '{"error": {"code": 400}}']
)
def test_garbage_still_fails_when_parsing_only_some_families(garbage: str) -> None:
    from lmtui.backends.base import BackendBadResponse
    from lmtui.backends.prom import LLAMACPP_NAMES, parse_prometheus

    with pytest.raises(BackendBadResponse):
        parse_prometheus(garbage, LLAMACPP_NAMES)
