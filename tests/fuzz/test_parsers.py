"""Property tests: every parser of outside input gives a result or its documented error.

Outside input is whatever a client, a node, a host's shell or the user's config file can
send: for each parser, any byte string (and, to get past the first check, inputs shaped
like the real thing with hypothesis choosing the details) either parses or raises the one
kind of error its callers handle — ``BackendBadResponse`` for what a node or host says,
``ConfigError`` for a config file, a 400 for a request body — never another exception.

Example counts are bounded so the whole file runs in well under a minute on CI's 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import string
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lmtui.backends import hostmem, llamacpp_parse, lmstudio, ollama, openai, prom
from lmtui.backends._common import decode_json
from lmtui.backends.base import BackendBadResponse, Reply
from lmtui.config import Config, load_config
from lmtui.config.errors import ConfigError
from lmtui.core.model import HostMemory, Snapshot
from lmtui.engine import codec
from lmtui.engine.dispatch import RequestRejected
from lmtui.engine.router import MAX_NAME, Router

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FEWER = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

# -- strategies ---------------------------------------------------------------------------

#: JSON scalars, including the awkward ones (huge ints, non-ASCII, empty strings).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def json_values(keys: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    """Any JSON value; object keys drawn from ``keys`` (real field names) or any text."""
    k = keys if keys is not None else st.text(max_size=10)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(k, inner, max_size=6),
        max_leaves=25,
    )


def encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.map(msgspec.json.encode)


#: Bytes a node could send instead of JSON: anything, JSON-ish, or broken on purpose.
def payloads(keys: list[str]) -> st.SearchStrategy[bytes]:
    vocab = st.sampled_from(keys) | st.text(max_size=8)
    return (
        st.binary(max_size=200)
        | encoded(json_values(vocab))
        | encoded(st.dictionaries(vocab, json_values(vocab), max_size=8))
        | st.sampled_from(
            [
                b'{"a": "\xff\xfe"}',  # invalid UTF-8 inside a string
                b"[" * 2000 + b"]" * 2000,  # nesting past the stack
                b'{"data": [' + b"[" * 1500 + b"]" * 1500 + b"]}",
                b'{"models": [{"name": "\xc3"}]}',
            ]
        )
    )


# -- the router's request-body decoder ----------------------------------------------------


class _Recorder:
    """An Exchange that keeps what the router answered."""

    def __init__(self) -> None:
        self.streaming = False
        self.answers: list[tuple[int, bytes]] = []

    async def send(self, status: int, body: bytes, headers: object) -> None:
        self.answers.append((status, body))

    async def start_stream(self, status: int, headers: object) -> None:
        raise AssertionError("no stream before a lease")

    async def write(self, chunk: bytes) -> None:
        raise AssertionError("no stream before a lease")

    async def end(self, chunk: bytes = b"") -> None:
        raise AssertionError("no stream before a lease")


class _NoNodes:
    """A dispatcher that records what it was asked for and has no model."""

    def __init__(self) -> None:
        self.asked: list[Any] = []
        self.backends: dict[str, Any] = {}  # which node serves which API (none here)

    async def acquire(self, req: Any, *, deadline: float, progress: Any) -> Any:
        self.asked.append(req)
        raise RequestRejected(404, "no such model")


def _router(dispatcher: _NoNodes, done: list[Any]) -> Router:
    return Router(
        dispatcher,  # type: ignore[arg-type]
        {},
        {},
        api_keys=[],
        queue_timeout_s=1.0,
        max_body_bytes=1 << 20,
        models=list,
        resolve=lambda name: name,
        on_done=lambda out, t0, t1: done.append(out),
    )


def _serve_body(body: bytes) -> tuple[_NoNodes, list[tuple[int, bytes]], list[Any]]:
    dispatcher, done = _NoNodes(), []
    ex = _Recorder()
    asyncio.run(_router(dispatcher, done).proxy(ex, "/v1/chat/completions", body, 0.0))
    return dispatcher, ex.answers, done


_HEAD_KEYS = ["model", "stream", "user", "messages", "ttl", "max_tokens", "stream_options"]

valid_heads = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=MAX_NAME)},
    optional={
        "stream": st.none() | st.booleans(),
        "user": st.none() | st.text(max_size=MAX_NAME),
        # Unknown fields of any type are the node's business, as in the OpenAI API.
        "ttl": json_values(),
        "messages": json_values(),
        "x": json_values(),
    },
)


@FAST
@given(payloads(_HEAD_KEYS) | encoded(valid_heads))
@example(b'{"model": "m\xff"}')
@example(b'{"model": "' + b"x" * (MAX_NAME + 1) + b'"}')
@example(b'{"model": "m", "user": "' + b"u" * (MAX_NAME + 1) + b'"}')
@example(b'{"model": "m", "stream": null, "ttl": "5m"}')
@example(b"[" * 1000 + b"]" * 1000)
def test_any_request_body_is_routed_or_a_400(body: bytes) -> None:
    dispatcher, answers, done = _serve_body(body)
    assert len(answers) == 1 and len(done) == 1, "one answer, counted once"
    status, payload = answers[0]
    error = msgspec.json.decode(payload)["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if status == 400:
        assert not dispatcher.asked
        assert error["code"] in {"invalid_request", "invalid_json", "missing_model"}
        assert done[0].outcome == "bad_request" and done[0].model == ""
    else:
        assert status == 404, (status, payload)
        (req,) = dispatcher.asked
        assert 1 <= len(req.model) <= MAX_NAME
        assert req.user is None or len(req.user) <= MAX_NAME


@FAST
@given(valid_heads)
def test_a_body_the_description_allows_is_never_a_400(head: dict[str, Any]) -> None:
    dispatcher, answers, _ = _serve_body(msgspec.json.encode(head))
    assert answers[0][0] == 404, answers
    assert dispatcher.asked[0].model == head["model"]


# -- the control API's wire format (codec.py) ----------------------------------------------

_SNAPSHOT_KEYS = [
    "version", "at", "nodes", "instances", "queue_depth", "name", "kind", "url", "health",
    "model", "node", "state", "instance_id", "slots_total", "memory", "message", "level",
    "steps", "summary", "action", "reason",
]  # fmt: skip


@FAST
@given(json_values(st.sampled_from(_SNAPSHOT_KEYS)))
@example([])
@example({"nodes": "x"})
@example({"version": []})
@example({"nodes": [{"name": 1}]})
def test_the_control_apis_wire_format_decodes_or_raises_a_value_error(value: Any) -> None:
    """What an attached dashboard gets from ``/lmtui/v1/state`` and ``/events``: a
    Snapshot, Event or RebalancePlan, or a ValueError (msgspec's ValidationError is one),
    which the client reports; nothing else."""
    for decode in (codec.snapshot_from_builtins, codec.event_from_builtins):
        try:
            got = decode(value)
        except ValueError:
            continue
        assert got is not None
    with contextlib.suppress(ValueError):
        codec.plan_from_builtins(value)


def test_a_snapshot_survives_the_wire() -> None:
    snap = Snapshot(version=3, at=1.5)
    back = codec.snapshot_from_builtins(
        msgspec.json.decode(codec.encode(codec.snapshot_to_builtins(snap)))
    )
    assert (back.version, back.at) == (3, 1.5)


# -- Prometheus text -------------------------------------------------------------------------

_PROM_NAMES = sorted(prom.LLAMACPP_NAMES | prom.VLLM_NAMES)
_label = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)
_value = st.sampled_from(["0", "1", "-1.5", "1e9", "NaN", "+Inf", "x", "", "0x10"]) | st.floats(
    allow_nan=True
).map(repr)


@st.composite
def prom_lines(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(_PROM_NAMES) | st.text(max_size=12))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            typ = draw(st.sampled_from(["counter", "gauge", "histogram", "bogus", ""]))
            lines.append(f"# TYPE {name} {typ}")
        elif kind == 1:
            lines.append(f"# HELP {name} {draw(st.text(max_size=10))}")
        else:
            labels = draw(st.dictionaries(_label, st.text(max_size=6), max_size=3))
            inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
            braces = draw(st.sampled_from([f"{{{inner}}}", "", "{", f"{{{inner}"]))
            lines.append(f"{name}{braces} {draw(_value)}")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))


@FAST
@given(st.binary(max_size=300).map(lambda b: Reply(200, b).text) | prom_lines())
@example('llamacpp:requests_processing{a="1"} 1\nllamacpp:requests_processing{a="1"} 2\n')
@example("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running NaN\n")
def test_prometheus_text_parses_or_is_a_bad_response(text: str) -> None:
    for only in (None, prom.LLAMACPP_NAMES, prom.VLLM_NAMES):
        try:
            samples = prom.parse_prometheus(text, only)
        except BackendBadResponse:
            continue
        prom.llamacpp_metrics(samples)
        prom.vllm_metrics(samples)
        prom.vllm_metrics(samples, model_name="m")
        openai.with_vllm_load((), samples)


# -- host memory: /proc/meminfo, vm_stat, the remote scripts' output -------------------------

_digits = st.integers(0, 2**70).map(str) | st.text(
    alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4
)


@st.composite
def meminfo(draw: st.DrawFn) -> str:
    names = ["MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal"]
    lines = [
        f"{draw(st.sampled_from(names) | st.text(max_size=8))}:"
        f"{draw(st.sampled_from([' ', '   ', '']))}{draw(_digits)}"
        f"{draw(st.sampled_from([' kB', '', ' MB', 'kB']))}"
        for _ in range(draw(st.integers(0, 6)))
    ]
    return "\n".join(lines)


@st.composite
def vm_stat(draw: st.DrawFn) -> str:
    names = ["Pages free", "Pages inactive", "Pages speculative", "Pages active"]
    head = draw(
        st.sampled_from(["Mach Virtual Memory Statistics: (page size of 16384 bytes)", ""])
        | _digits.map(lambda d: f"(page size of {d} bytes)")
    )
    lines = [
        f"{draw(st.sampled_from(names) | st.text(max_size=8))}:"
        f"{draw(st.sampled_from(['   ', ' ']))}{draw(_digits)}{draw(st.sampled_from(['.', '']))}"
        for _ in range(draw(st.integers(0, 5)))
    ]
    return "\n".join([head, *lines])


def _host_memory_or_bad(fn: Any, *args: Any) -> None:
    try:
        got = fn(*args)
    except BackendBadResponse:
        return
    if isinstance(got, HostMemory):
        assert 0 <= got.available_bytes <= got.total_bytes


_any_text = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")) | st.text(
    max_size=200
)


@FAST
@given(_any_text | meminfo())
@example("MemTotal: ² kB\nMemAvailable: 1 kB")
@example("MemTotal: 16 kB\nMemAvailable: 99 kB")
def test_meminfo_parses_or_is_a_bad_response(text: str) -> None:
    _host_memory_or_bad(hostmem.parse_meminfo, text)
    _host_memory_or_bad(
        hostmem.parse_linux_memory_output, f"@@lmtui:meminfo@@\n{text}\n@@lmtui:nvidia_smi@@\n"
    )


@FAST
@given(_any_text | vm_stat(), st.integers(-5, 2**64), st.none() | _any_text)
@example(
    "(page size of ³ bytes)\nPages free: 1.\nPages inactive: 1.\nPages speculative: 1.", 1, None
)
def test_vm_stat_parses_or_is_a_bad_response(text: str, memsize: int, pressure: str | None) -> None:
    _host_memory_or_bad(hostmem.parse_vm_stat, text, memsize, pressure)
    script = f"@@lmtui:memsize@@\n{memsize}\n@@lmtui:vm_stat@@\n{text}\n"
    if pressure is not None:
        script += f"@@lmtui:memory_pressure@@\n{pressure}\n"
    _host_memory_or_bad(hostmem.parse_macos_memory_output, script)


@FAST
@given(
    _any_text
    | st.lists(st.tuples(_digits, _digits), max_size=3).map(
        lambda rows: "\n".join(f"{a}, {b}" for a, b in rows)
    )
)
@example("nan, 1")
@example("inf, 1")
def test_nvidia_smi_and_memory_pressure_parse_or_are_a_bad_response(text: str) -> None:
    with contextlib.suppress(BackendBadResponse):
        hostmem.parse_nvidia_smi(text)
    pct = hostmem.parse_memory_pressure(f"System-wide memory free percentage: {text}%")
    assert pct is None or 0.0 <= pct <= 100.0


# -- node payloads: llama-server, LM Studio, Ollama, OpenAI-compatible -----------------------

_NODE_KEYS = [
    "data", "models", "id", "name", "model", "key", "status", "value", "args", "failed",
    "exit_code", "meta", "size", "n_ctx", "n_ctx_train", "total_slots", "model_path",
    "model_alias", "default_generation_settings", "is_sleeping", "build_info", "role",
    "max_instances", "models_autoload", "is_processing", "state", "loaded_instances",
    "config", "parallel", "context_length", "size_bytes", "type", "max_context_length",
    "instance_id", "identifier", "loaded_context_length", "expires_at", "version", "error",
    "message", "max_model_len", "done",
]  # fmt: skip


def _node_parsers(payload: Any) -> None:
    """Every parser of a decoded node answer, on the same value."""
    for parse in (
        llamacpp_parse.parse_props,
        llamacpp_parse.parse_router_props,
        llamacpp_parse.parse_slots,
        llamacpp_parse.parse_models,
        lmstudio.parse_v1_models,
        lmstudio.parse_v0_models,
        ollama.parse_ps,
        ollama.parse_tags,
        ollama.parse_version,
        openai.parse_openai_models,
        lambda p: lmstudio.parse_load_answer(p, "m"),
    ):
        with contextlib.suppress(BackendBadResponse):
            parse(payload)
    # The predicates never raise.
    llamacpp_parse.is_router_props(payload)
    llamacpp_parse.is_router_payload(payload)
    llamacpp_parse.is_loading_answer(503, payload)
    llamacpp_parse.is_limit_answer(500, payload)
    lmstudio.unknown_endpoint(payload)
    if isinstance(payload, dict):
        ollama.parse_expires_at(payload.get("expires_at"))
    if isinstance(payload, str):
        llamacpp_parse.model_name(payload)


@FAST
@given(payloads(_NODE_KEYS))
def test_node_payloads_parse_or_are_a_bad_response(body: bytes) -> None:
    """From the bytes a node sent, as the adapters read them (``decode_json``)."""
    try:
        payload = decode_json(Reply(200, body), "GET /x")
    except BackendBadResponse:
        return
    _node_parsers(payload)


@FAST
@given(st.lists(payloads(_NODE_KEYS), max_size=4).map(b"\n".join))
def test_an_ollama_generate_answer_parses_or_is_a_bad_response(body: bytes) -> None:
    with contextlib.suppress(BackendBadResponse):
        assert isinstance(ollama.parse_generate_answer(body), dict)


@FAST
@given(
    st.text(max_size=40) | st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00"])
)
def test_ollama_expiry_times_parse_or_are_unknown(value: str) -> None:
    t = ollama.parse_expires_at(value)
    assert t is None or (t > 0 and math.isfinite(t))


# -- the config loader -------------------------------------------------------------------------

_CONFIG_KEYS: dict[str, list[str]] = {
    "router": ["listen", "strategy", "api_keys_env", "allowed_hosts", "allowed_origins",
               "queue_depth", "queue_timeout", "max_body_bytes", "idle_timeout",
               "max_answer_bytes", "first_byte_timeout", "max_replicas", "request_log_days"],
    "poll": ["interval", "timeout", "memory_interval"],
    "pool": ["reserved_gb", "eviction", "idle_ttl", "min_residency"],
}  # fmt: skip
_NODE_CONFIG_KEYS = ["name", "kind", "url", "memory_gb", "slots", "api_key_env", "ssh",
                     "poll_interval", "first_byte_timeout", "reserved_gb"]  # fmt: skip
_toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["127.0.0.1:4000", "http://127.0.0.1:1234", "lmstudio", "ollama", "lru"])
)
_toml_values = st.recursive(
    _toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for table, keys in _CONFIG_KEYS.items():
        if draw(st.booleans()):
            doc[table] = draw(st.dictionaries(st.sampled_from(keys), _toml_values, max_size=4))
    doc["nodes"] = draw(
        st.lists(
            st.dictionaries(st.sampled_from(_NODE_CONFIG_KEYS), _toml_values, max_size=5),
            max_size=3,
        )
    )
    if draw(st.booleans()):
        doc["models"] = [
            draw(
                st.dictionaries(
                    st.sampled_from(["name", "aliases", "pinned", "slots"]),
                    _toml_values,
                    max_size=3,
                )
            )
        ]
    if draw(st.booleans()):
        doc[draw(st.text(max_size=5))] = draw(_toml_values)
    return doc


def _toml(doc: dict[str, Any]) -> bytes:
    try:
        return tomli_w.dumps(doc).encode()
    except (ValueError, TypeError):  # NaN keys and the like tomli-w will not write
        assume(False)
        raise


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


def _load(config_dir: Path, raw: bytes) -> None:
    path = config_dir / "config.toml"
    path.write_bytes(raw)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert e.problems and str(e)
        return
    assert isinstance(cfg, Config)


@FEWER
@given(st.binary(max_size=200) | st.text(alphabet=string.printable, max_size=200).map(str.encode))
@example(b"\xef\xbb\xbf[router]\nlisten = 1\n")
@example(b"a = " + b"[" * 500 + b"]" * 500)
@example(b"[[nodes]]\nname = 'a'\nkind = 'lmstudio'\nurl = 'http://[::1'\n")
def test_any_bytes_load_as_a_config_or_a_config_error(config_dir: Path, raw: bytes) -> None:
    _load(config_dir, raw)


@FEWER
@given(config_docs())
def test_any_config_shaped_document_loads_or_is_a_config_error(
    config_dir: Path, doc: dict[str, Any]
) -> None:
    _load(config_dir, _toml(doc))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[router]\n",
        b'[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "http://127.0.0.1:11434"\n',
    ],
)
def test_good_configs_load(config_dir: Path, raw: bytes) -> None:
    path = config_dir / "good.toml"
    path.write_bytes(raw)
    assert isinstance(load_config(path), Config)
