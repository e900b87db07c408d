"""LM Studio parsers against the payloads BACKENDS.md documents (v1 and legacy v0)."""

from __future__ import annotations

from typing import Any

import pytest

from lmtui.backends import BackendBadResponse
from lmtui.backends.lmstudio import (
    parse_load_answer,
    parse_v0_models,
    parse_v1_models,
    unknown_endpoint,
)

V1_MODELS = {
    "models": [
        {
            "type": "llm",
            "publisher": "qwen",
            "key": "qwen/qwen3-8b",
            "display_name": "Qwen3 8B",
            "architecture": "qwen3",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
            "size_bytes": 5027783488,
            "params_string": "8B",
            "max_context_length": 40960,
            "format": "gguf",
            "capabilities": {"vision": False, "trained_for_tool_use": True},
            "description": None,
            "variants": ["qwen/qwen3-8b@q4_k_m"],
            "selected_variant": "qwen/qwen3-8b@q4_k_m",
            "loaded_instances": [
                {
                    "id": "qwen/qwen3-8b",
                    "config": {
                        "context_length": 8192,
                        "eval_batch_size": 512,
                        "parallel": 2,
                        "flash_attention": True,
                        "num_experts": 0,
                        "offload_kv_cache_to_gpu": True,
                    },
                },
                {"id": "qwen/qwen3-8b:2", "config": {"context_length": 4096}},
            ],
        },
        {
            # Embedding entries lack architecture/capabilities/description.
            "type": "embedding",
            "publisher": "nomic-ai",
            "key": "text-embedding-nomic-embed-text-v1.5",
            "size_bytes": 84106624,
            "max_context_length": 2048,
            "format": "gguf",
            "loaded_instances": [
                {"id": "text-embedding-nomic-embed-text-v1.5", "config": {"context_length": 2048}}
            ],
        },
        {
            "type": "decision",
            "key": "lms/router",
            "max_context_length": None,
            "format": None,
            "loaded_instances": [],
        },
        # Older 0.4 builds: little but key and loaded_instances.
        {"key": "google/gemma-3-4b", "loaded_instances": []},
    ]
}

V0_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "qwen2-vl-7b-instruct",
            "object": "model",
            "type": "vlm",
            "publisher": "mlx-community",
            "arch": "qwen2_vl",
            "compatibility_type": "mlx",
            "quantization": "4bit",
            "state": "not-loaded",
            "max_context_length": 32768,
        },
        {
            "id": "meta-llama-3.1-8b-instruct",
            "object": "model",
            "type": "llm",
            "publisher": "lmstudio-community",
            "arch": "llama",
            "compatibility_type": "gguf",
            "quantization": "Q4_K_M",
            "state": "loaded",
            "max_context_length": 131072,
        },
        {
            "id": "text-embedding-nomic-embed-text-v1.5",
            "object": "model",
            "type": "embeddings",
            "publisher": "nomic-ai",
            "arch": "nomic-bert",
            "compatibility_type": "gguf",
            "quantization": "Q4_0",
            "state": "not-loaded",
            "max_context_length": 2048,
        },
    ],
}


def test_v1_instances_and_slots() -> None:
    instances, _ = parse_v1_models(V1_MODELS)
    by_id = {i.instance_id: i for i in instances}
    assert set(by_id) == {
        "qwen/qwen3-8b",
        "qwen/qwen3-8b:2",
        "text-embedding-nomic-embed-text-v1.5",
    }
    first = by_id["qwen/qwen3-8b"]
    assert (first.model, first.context_length, first.slots_total) == ("qwen/qwen3-8b", 8192, 2)
    assert first.size_bytes == 5027783488
    # No `parallel` in config: LM Studio 0.4's default of 4 concurrent predictions.
    assert by_id["qwen/qwen3-8b:2"].slots_total == 4
    assert by_id["text-embedding-nomic-embed-text-v1.5"].slots_total == 4


def test_v1_available_lists_every_model() -> None:
    _, available = parse_v1_models(V1_MODELS)
    by_key = {a.key: a for a in available}
    assert list(by_key) == [
        "qwen/qwen3-8b",
        "text-embedding-nomic-embed-text-v1.5",
        "lms/router",
        "google/gemma-3-4b",
    ]
    assert by_key["qwen/qwen3-8b"].size_bytes == 5027783488
    assert by_key["text-embedding-nomic-embed-text-v1.5"].kind == "embedding"
    assert by_key["lms/router"].kind == "decision"
    assert by_key["lms/router"].max_context_length is None
    assert by_key["google/gemma-3-4b"].size_bytes is None
    assert by_key["google/gemma-3-4b"].kind == "llm"


def test_v0_loaded_models_are_serial_instances() -> None:
    instances, available = parse_v0_models(V0_MODELS)
    assert [(i.model, i.instance_id, i.slots_total) for i in instances] == [
        ("meta-llama-3.1-8b-instruct", "meta-llama-3.1-8b-instruct", 1)
    ]
    kinds = {a.key: a.kind for a in available}
    assert kinds == {
        "qwen2-vl-7b-instruct": "vlm",
        "meta-llama-3.1-8b-instruct": "llm",
        "text-embedding-nomic-embed-text-v1.5": "embedding",
    }
    assert available[1].max_context_length == 131072


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"data": []},  # a v0 answer given to the v1 parser
        {"models": [{"display_name": "no key"}]},
        {"models": ["qwen"]},
        {"models": [{"key": "a", "loaded_instances": ["not-an-object"]}]},
    ],
)
def test_v1_unusable_shapes_are_bad_response(payload: Any) -> None:
    with pytest.raises(BackendBadResponse):
        parse_v1_models(payload)


@pytest.mark.parametrize("payload", [{"models": []}, {"data": [{"state": "loaded"}]}, "x"])
def test_v0_unusable_shapes_are_bad_response(payload: Any) -> None:
    with pytest.raises(BackendBadResponse):
        parse_v0_models(payload)


@pytest.mark.parametrize(
    "answer",
    [
        {
            "type": "llm",
            "instance_id": "qwen/qwen3-8b:3",
            "load_time_seconds": 2.1,
            "status": "loaded",
        },
        # Earlier 0.4 builds.
        {
            "type": "llm",
            "model_instance_id": "qwen/qwen3-8b:3",
            "load_time_seconds": 2.1,
            "status": "loaded",
        },
    ],
)
def test_load_answer_both_field_names(answer: dict[str, Any]) -> None:
    assert parse_load_answer(answer, "qwen/qwen3-8b") == "qwen/qwen3-8b:3"


def test_unknown_endpoint_answer_is_recognised() -> None:
    # LM Studio's HTTP 200 answer for a route it lacks (lmstudio-bug-tracker #618, #1323).
    body = {"error": "Unexpected endpoint or method. (GET /api/v1/models)"}
    assert unknown_endpoint(body) == "Unexpected endpoint or method. (GET /api/v1/models)"
    assert unknown_endpoint({"models": []}) is None
    assert unknown_endpoint({"object": "list", "data": []}) is None
    assert unknown_endpoint([]) is None


def test_v1_sizes_are_the_servers_own() -> None:
    instances, available = parse_v1_models(V1_MODELS)
    assert {a.size_source for a in available if a.size_bytes is not None} == {"server"}
    assert all(i.size_source == "server" for i in instances if i.size_bytes is not None)
    assert instances  # the sample has a loaded instance
