"""``lms ps --json`` parsing and the command lines lmtui sends (no SSH here: a fake host)."""

from __future__ import annotations

import json

import pytest

from lmtui.backends.base import BackendBadResponse
from lmtui.backends.lms import LmsCli, parse_ps

PS = [
    {
        "identifier": "qwen-7b",
        "modelKey": "qwen-7b",
        "type": "llm",
        "sizeBytes": 4_700_000_000,
        "contextLength": 8192,
        "maxContextLength": 32768,
        "ttlMs": 3_600_000,
        "lastUsedTime": 1_700_000_000_000,
        "status": "generating",
        "queued": 5,
        "parallel": 4,
    },
    {"identifier": "emb:2", "modelKey": "nomic-embed", "type": "embedding", "status": "idle"},
]


def test_ps_entries_with_busy_and_queued_truth() -> None:
    qwen, emb = parse_ps(json.dumps(PS))
    assert qwen.model == "qwen-7b" and qwen.size_bytes == 4_700_000_000
    assert qwen.ttl_s == 3600 and qwen.last_used == 1_700_000_000
    # queued counts the running ones: 4 slots busy, 1 waiting.
    assert qwen.busy == 4 and qwen.waiting == 1
    assert emb.identifier == "emb:2" and emb.kind == "embedding" and emb.busy == 0


@pytest.mark.parametrize(
    "entry",
    [
        {"identifier": "x", "modelKey": "x", "sizeBytes": "big", "queued": -3, "parallel": True},
        {"identifier": "x", "modelKey": "x", "ttlMs": None, "status": 7},
    ],
)
def test_fields_of_the_wrong_type_are_left_out(entry: dict[str, object]) -> None:
    (inst,) = parse_ps(json.dumps([entry, "junk", {"no": "key"}]))
    assert inst.size_bytes is None and inst.queued == 0 and inst.parallel is None
    assert inst.status == "idle"


@pytest.mark.parametrize("out", ["not json", '{"a": 1}', "x" * (1024 * 1024 + 1)])
def test_unusable_output_is_a_bad_response(out: str) -> None:
    with pytest.raises(BackendBadResponse):
        parse_ps(out)


def test_no_output_is_no_instance() -> None:
    assert parse_ps("  \n") == []


class FakeHost:
    def __init__(self) -> None:
        self.commands: list[tuple[str, float | None]] = []

    async def run(
        self, command: str, *, input: str | None = None, timeout: float | None = None
    ) -> str:
        self.commands.append((command, timeout))
        return "[]"

    async def close(self) -> None: ...


async def test_command_lines_are_quoted_and_bounded() -> None:
    host = FakeHost()
    cli = LmsCli(host, "~/.lmstudio/bin/lms")  # type: ignore[arg-type]
    await cli.ps()
    await cli.load("qwen 7b; rm -rf /", "qwen:2", ttl=299.6, parallel=2, context_length=4096)
    await cli.unload("it's")
    (ps, _), (load, load_timeout), (unload, _) = host.commands
    assert ps == '"$HOME"/.lmstudio/bin/lms ps --json'
    assert load == (
        "\"$HOME\"/.lmstudio/bin/lms load 'qwen 7b; rm -rf /' --identifier qwen:2 "
        "--ttl 300 --parallel 2 -c 4096 -y"
    )
    assert load_timeout is not None and load_timeout >= 60  # a load takes minutes
    assert unload == "\"$HOME\"/.lmstudio/bin/lms unload 'it'\"'\"'s'"
    with pytest.raises(ValueError):
        await cli.load("m" * 300, "id")
    with pytest.raises(ValueError):
        await cli.unload("a\nb")
    assert LmsCli(host, "/opt/lms bin/lms").command == "'/opt/lms bin/lms'"  # type: ignore[arg-type]
