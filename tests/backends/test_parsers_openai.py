"""vLLM / OpenAI-compatible parsers and the Prometheus wrapper."""

from __future__ import annotations

from typing import Any

import pytest

from lmtui.backends import BackendBadResponse
from lmtui.backends.openai import parse_openai_models, with_vllm_load
from lmtui.backends.prom import parse_prometheus, vllm_metrics

V1_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "Qwen/Qwen2.5-7B-Instruct",
            "object": "model",
            "created": 1730000000,
            "owned_by": "vllm",
            "root": "Qwen/Qwen2.5-7B-Instruct",
            "parent": None,
            "max_model_len": 32768,
            "permission": [],
        },
        {"id": "local-embed", "object": "model", "owned_by": "localai"},
    ],
}

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 1234.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 5678.0
"""

# Older vLLM: gpu_cache_usage_perc, no engine label.
VLLM_OLD_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="served"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="served"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="served"} 0.1
"""


def test_models_are_instances() -> None:
    a, b = parse_openai_models(V1_MODELS)
    assert (a.model, a.instance_id, a.context_length) == (
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        32768,
    )
    assert (b.model, b.context_length) == ("local-embed", None)


@pytest.mark.parametrize("payload", [[], {"data": "x"}, {"data": [{"object": "model"}]}])
def test_models_garbage(payload: Any) -> None:
    with pytest.raises(BackendBadResponse):
        parse_openai_models(payload)


def test_vllm_metrics_new_names() -> None:
    m = vllm_metrics(parse_prometheus(VLLM_METRICS))
    assert (m.requests_processing, m.requests_waiting) == (3, 5)
    assert m.kv_cache_usage == pytest.approx(0.42)
    assert m.prompt_tokens_total == 1234
    assert m.predicted_tokens_total == 5678


def test_vllm_metrics_old_cache_name() -> None:
    m = vllm_metrics(parse_prometheus(VLLM_OLD_METRICS))
    assert m.kv_cache_usage == pytest.approx(0.1)
    assert m.requests_processing == 1


def test_per_model_load_from_labels() -> None:
    instances = with_vllm_load(parse_openai_models(V1_MODELS), parse_prometheus(VLLM_METRICS))
    qwen, embed = instances
    assert (qwen.slots_busy, qwen.queued) == (3, 5)
    assert (embed.slots_busy, embed.queued) == (None, None)


def test_single_model_takes_node_totals_when_names_differ() -> None:
    (inst,) = with_vllm_load(
        parse_openai_models({"data": [{"id": "alias"}]}), parse_prometheus(VLLM_OLD_METRICS)
    )
    assert inst.slots_busy == 1


def test_metrics_absent_names_are_none() -> None:
    m = vllm_metrics(parse_prometheus("# TYPE other gauge\nother 1\n"))
    assert m.requests_processing is None and m.kv_cache_usage is None


@pytest.mark.parametrize(
    "text",
    [
        '{"error": {"code": 400, "message": "model name is missing"}}',
        "<html><body>502 Bad Gateway</body></html>",
        "vllm:num_requests_running not-a-number\n",
    ],
)
def test_not_prometheus_is_bad_response(text: str) -> None:
    with pytest.raises(BackendBadResponse):
        parse_prometheus(text)
