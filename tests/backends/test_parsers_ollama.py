"""Ollama parsers against the payloads BACKENDS.md documents, old and new variants."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lmtui.backends import BackendBadResponse
from lmtui.backends.ollama import (
    keep_alive,
    parse_expires_at,
    parse_generate_answer,
    parse_ps,
    parse_tags,
    parse_version,
)

PS_NEW = {
    "models": [
        {
            "name": "llama3.2:3b",
            "model": "llama3.2:3b",
            "size": 3487424512,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
            "expires_at": "2024-06-04T14:38:31.83753-07:00",
            "size_vram": 3487424512,
            "context_length": 4096,
        }
    ]
}

# Older servers: no context_length; some versions no name either (use model).
PS_OLD = {
    "models": [
        {
            "model": "qwen2.5:7b",
            "size": 5400000000,
            "size_vram": 0,
            "digest": "845dbda0ea48",
            "expires_at": "2318-04-01T09:30:00.123456789+02:00",  # keep_alive < 0
        }
    ]
}

TAGS = {
    "models": [
        {
            "name": "llama3.2:3b",
            "model": "llama3.2:3b",
            "modified_at": "2024-10-01T10:00:00.0+02:00",
            "size": 2019393189,
            "digest": "a80c4f17acd5",
            "details": {"family": "llama", "parameter_size": "3.2B"},
        },
        {"model": "nomic-embed-text:latest", "size": 274302450},
    ]
}


def test_ps_new_fields() -> None:
    (inst,) = parse_ps(PS_NEW, slots=3)
    assert (inst.model, inst.instance_id) == ("llama3.2:3b", "llama3.2:3b")
    assert inst.size_bytes == 3487424512
    assert inst.context_length == 4096
    assert inst.slots_total == 3
    expected = datetime(2024, 6, 4, 21, 38, 31, 837530, tzinfo=UTC).timestamp()
    assert inst.expires_at == pytest.approx(expected)


def test_ps_old_fields_use_model_and_skip_context() -> None:
    (inst,) = parse_ps(PS_OLD)
    assert inst.model == "qwen2.5:7b"
    assert inst.context_length is None
    assert inst.slots_total == 1  # OLLAMA_NUM_PARALLEL's default
    # keep_alive < 0: centuries ahead, i.e. never expires within any horizon that matters.
    assert inst.expires_at is not None
    assert inst.expires_at > datetime(2300, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("payload", [{"models": []}, {"models": None}])
def test_ps_idle_server(payload: dict[str, Any]) -> None:
    assert parse_ps(payload) == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-06-04T14:38:31-07:00", datetime(2024, 6, 4, 21, 38, 31, tzinfo=UTC)),
        ("2024-06-04T21:38:31Z", datetime(2024, 6, 4, 21, 38, 31, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),  # Go's zero time
        ("not a time", None),
        (None, None),
        (17, None),
    ],
)
def test_expires_at(value: Any, expected: datetime | None) -> None:
    got = parse_expires_at(value)
    assert got == (expected.timestamp() if expected else None)


def test_tags() -> None:
    tags = parse_tags(TAGS)
    assert [(t.key, t.size_bytes) for t in tags] == [
        ("llama3.2:3b", 2019393189),
        ("nomic-embed-text", 274302450),  # ":latest" is implied
    ]


def test_version() -> None:
    assert parse_version({"version": "0.5.7"}) == "0.5.7"
    assert parse_version({}) is None


@pytest.mark.parametrize(
    "payload", [[], {"models": {}}, {"models": [{"size": 1}]}, {"models": ["llama3"]}, "ok"]
)
def test_unusable_shapes_are_bad_response(payload: Any) -> None:
    with pytest.raises(BackendBadResponse):
        parse_ps(payload)
    with pytest.raises(BackendBadResponse):
        parse_tags(payload)


def test_generate_answers() -> None:
    unload = b'{"model":"llama3.2","created_at":"2024-09-12T21:17:31Z","response":"",'
    unload += b'"done":true,"done_reason":"unload"}'
    assert parse_generate_answer(unload)["done_reason"] == "unload"
    load = b'{"model":"llama3.2","created_at":"2024-09-12T21:17:31Z","response":"","done":true}'
    assert parse_generate_answer(load)["done"] is True


def test_generate_error_line_after_200_raises() -> None:
    body = b'{"model":"m","response":"","done":false}\n{"error":"out of memory"}\n'
    with pytest.raises(BackendBadResponse, match="out of memory"):
        parse_generate_answer(body)


@pytest.mark.parametrize("body", [b"", b"<html>", b"[1]"])
def test_generate_garbage(body: bytes) -> None:
    with pytest.raises(BackendBadResponse):
        parse_generate_answer(body)


def test_keep_alive() -> None:
    assert keep_alive(None) == -1
    assert keep_alive(-1) == -1
    assert keep_alive(1800) == "1800s"
    assert keep_alive(0.2) == "1s"  # 0 would unload at once


def test_latest_tag_is_implied_other_tags_are_kept() -> None:
    from lmtui.backends.ollama import canonical_name

    assert canonical_name("qwen2.5:latest") == "qwen2.5"
    assert canonical_name("qwen2.5:7b") == "qwen2.5:7b"
    assert canonical_name("hf.co/org/model:Q4_K_M") == "hf.co/org/model:Q4_K_M"
