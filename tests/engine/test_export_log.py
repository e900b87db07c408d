"""lmtui export-log: the request log the router writes becomes a trace lmtui replay reads."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from lmtui.cli import main as lmtui_main
from lmtui.engine.reqlog import RequestLog, RequestRecord
from lmtui.replay.export import ExportError, parse_since
from lmtui.replay.trace import parse_trace


def rec(at: float, model: str, **kw: object) -> RequestRecord:
    fields: dict[str, object] = {
        "at": at,
        "model": model,
        "node": "n1",
        "queue_wait_s": 0.0,
        "ttft_s": 0.1,
        "duration_s": 2.0,
        "tokens_in": 100,
        "tokens_out": 20,
        "outcome": "ok",
        "status": 200,
        "stream": False,
    }
    fields.update(kw)
    return RequestRecord(**fields)  # type: ignore[arg-type]


async def write_log(path: Path, records: list[RequestRecord]) -> None:
    log = RequestLog(path, flush_interval_s=60)
    await log.start()
    for r in records:
        log.record(r)
    await log.stop()


async def test_export_then_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "requests.sqlite3"
    now = time.time()
    await write_log(
        db,
        [
            rec(now - 7200, "old"),
            rec(now - 30, "qwen", user="u1"),
            rec(now - 20, "gemma", tokens_in=None, tokens_out=None, duration_s=3.0),
            rec(now - 10, "nope", outcome="not_found", status=404),
        ],
    )
    assert lmtui_main(["export-log", "--db", str(db), "--since", "1h"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == ",".join(RequestRecord._fields)
    assert "2 requests" in err
    trace = parse_trace(io.StringIO(out))
    assert [(r.model, r.tokens_in) for r in trace] == [("qwen", 100), ("gemma", 0)]
    assert trace[1].service_s == 3.0 and trace[1].at == pytest.approx(10, abs=0.01)

    csv = tmp_path / "log.csv"
    csv.write_text(out)
    assert lmtui_main(["replay", str(csv), "--json", "--policy", "lru"]) == 0
    report = capsys.readouterr().out
    assert '"assignment": null' in report and '"qwen"' in report


def test_export_without_a_log_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lmtui_main(["export-log", "--db", str(tmp_path / "none.sqlite3")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no request log at" in err and "none.sqlite3" in err


def test_export_of_a_file_that_is_not_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.sqlite3"
    bad.write_text("not a database")
    assert lmtui_main(["export-log", "--db", str(bad)]) == 2
    assert "lmtui export-log: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,expected",
    [("90m", 1000.0 - 5400), ("2d", 1000.0 - 172800), ("500", 500.0), ("1970-01-01T00:10", 600.0)],
)
def test_since(text: str, expected: float) -> None:
    assert parse_since(text, now=1000.0) == expected


def test_since_rejects_nonsense() -> None:
    with pytest.raises(ExportError, match="expected a duration"):
        parse_since("yesterday", now=0.0)
