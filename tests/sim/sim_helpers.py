"""Helpers shared by the simulator tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llama-server"

#: Simulated seconds become 1/100 real seconds: a 10 s load takes 0.1 s.
FAST = 0.01


def fixture_json(path: str) -> Any:
    return json.loads((FIXTURES / path).read_text())


def chat_body(
    model: str, *, max_tokens: int = 16, stream: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there, cluster"}],
        "max_tokens": max_tokens,
        "stream": stream,
        **extra,
    }


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, checking the framing (``data: ...`` + blank line)."""
    assert text.endswith("\n\n"), "every SSE event ends with a blank line"
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[len("data: ") :])
    return events
