"""Pure parsers for llama.cpp ``llama-server`` payloads, single-model and router mode.

Checked against payloads captured from a real server (``tests/fixtures/llama-server``).
"""

from __future__ import annotations

import itertools
import posixpath
from dataclasses import dataclass
from typing import Any

from lmtui.backends._common import (
    bad,
    error_message,
    expect_dict,
    expect_list,
    opt_dict,
    opt_int,
    opt_str,
)
from lmtui.core.model import InstanceState

#: Router ``status.value``s that hold a model process, and the state each maps to.
#: ``sleeping`` (``--sleep-idle-seconds``) freed the weights but wakes on the next request,
#: so it stays routable: it counts as loaded. ``downloading`` (a ``-hf`` model fetched by a
#: download worker) and ``downloaded`` (the worker is done, the real load follows) are a
#: load in progress: read as loading, so the scheduler waits for it instead of posting
#: another load (with no instance, it re-posted 4,203 loads in 4 s for one request).
ROUTER_STATES = {
    "downloading": InstanceState.LOADING,
    "downloaded": InstanceState.LOADING,
    "loading": InstanceState.LOADING,
    "loaded": InstanceState.LOADED,
    "sleeping": InstanceState.LOADED,
    "failed": InstanceState.FAILED,
}
#: Statuses a load is finished in (``sleeping`` is loaded and wakes on the next request).
READY_STATUSES = frozenset({"loaded", "sleeping"})
#: Statuses of a load under way: wait for it, never post another.
LOADING_STATUSES = frozenset({"downloading", "downloaded", "loading"})
#: What a router at ``--models-max`` says when every resident model is busy (HTTP 500):
#: transient, the load can be tried again once one is idle.
LIMIT_MESSAGE = "model limit reached"


def is_limit_answer(status_code: int, body: Any) -> bool:
    """True for a router's 500 "model limit reached, try again later" (a load refused at
    ``--models-max`` while every resident model is busy: transient, not a failure)."""
    return status_code == 500 and LIMIT_MESSAGE in (error_message(body) or "").lower()


def model_name(model_id: str) -> str:
    """The name lmtui gives a single-model server's model: a path-like id
    (``../models/Name.gguf``, as ``/v1/models`` shows ``-m PATH`` without ``--alias``) becomes
    the file's base name without ``.gguf``, so the same file has one name on every node
    whatever path each server was started with. Other ids (an ``--alias`` such as
    ``qwen/qwen3-8b``, which other kinds of node use too) are kept."""
    path = model_id.replace("\\", "/")
    is_file = path.lower().endswith(".gguf")
    if not is_file and not path.startswith(("/", "./", "../", "~/")):
        return model_id
    base = posixpath.basename(path)
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")]
    return base or model_id


def is_loading_answer(status_code: int, body: Any) -> bool:
    """True for llama-server's 503 "Loading model" (every route answers it while loading)."""
    if status_code != 503:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("type") == "unavailable_error":
        return True
    return "loading" in (error_message(body) or "").lower()


@dataclass(frozen=True, slots=True)
class Props:
    """What ``GET /props`` says about the server and its model."""

    total_slots: int | None = None
    model_path: str | None = None
    model_alias: str | None = None
    #: Context per slot (``default_generation_settings.n_ctx``).
    n_ctx: int | None = None
    is_sleeping: bool = False
    build_info: str | None = None

    @property
    def model_name(self) -> str | None:
        """The name clients use: the alias, else the file name of the model."""
        if self.model_alias:
            return self.model_alias
        return posixpath.basename(self.model_path) if self.model_path else None


def parse_props(payload: Any) -> Props:
    """Parse ``GET /props`` (single mode, or router mode with ``?model=``)."""
    body = expect_dict(payload, "/props")
    return Props(
        total_slots=opt_int(body, "total_slots"),
        model_path=opt_str(body, "model_path"),
        model_alias=opt_str(body, "model_alias"),
        n_ctx=opt_int(opt_dict(body, "default_generation_settings"), "n_ctx"),
        is_sleeping=body.get("is_sleeping") is True,
        build_info=opt_str(body, "build_info"),
    )


@dataclass(frozen=True, slots=True)
class RouterProps:
    """What a router's own ``GET /props`` (no ``?model=``) says."""

    #: ``--models-max``: how many models it keeps running at once; None = no limit (the
    #: server sends 0 for that).
    max_instances: int | None = None
    models_autoload: bool | None = None
    build_info: str | None = None


def is_router_props(payload: Any) -> bool:
    """True for a router's own ``/props`` (``"role": "router"``)."""
    return isinstance(payload, dict) and payload.get("role") == "router"


def parse_router_props(payload: Any) -> RouterProps:
    """Parse a router's ``GET /props`` without ``?model=`` (capture ``props-router.json``)."""
    body = expect_dict(payload, "/props")
    limit = opt_int(body, "max_instances")
    autoload = body.get("models_autoload")
    return RouterProps(
        max_instances=limit if limit is not None and limit > 0 else None,
        models_autoload=autoload if isinstance(autoload, bool) else None,
        build_info=opt_str(body, "build_info"),
    )


@dataclass(frozen=True, slots=True)
class Slots:
    """What ``GET /slots`` says: how many slots, how many are busy, context per slot."""

    total: int
    busy: int
    n_ctx: int | None = None


def parse_slots(payload: Any) -> Slots:
    """Parse ``GET /slots``: a slot is busy while ``is_processing`` (older: ``state != 0``)."""
    slots = expect_list(payload, "/slots")
    busy = 0
    n_ctx: int | None = None
    for raw in slots:
        slot = expect_dict(raw, "/slots entry")
        processing = slot.get("is_processing")
        if processing is None:  # builds before is_processing reported state 0 = idle
            processing = slot.get("state", 0) != 0
        busy += bool(processing)
        n_ctx = n_ctx or opt_int(slot, "n_ctx")
    return Slots(total=len(slots), busy=busy, n_ctx=n_ctx)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as ``/v1/models`` or the router's ``/models`` lists it."""

    id: str
    #: Router mode only: unloaded | loading | loaded | sleeping | downloading | failed.
    status: str | None = None
    size_bytes: int | None = None
    n_ctx: int | None = None
    n_ctx_train: int | None = None
    #: ``--parallel`` from the router's command line for the model's process.
    parallel: int | None = None
    error: str | None = None

    @property
    def state(self) -> InstanceState | None:
        """The instance state, or None when no process holds the model."""
        return ROUTER_STATES.get(self.status or "")


def _parallel_from_args(args: Any) -> int | None:
    if not isinstance(args, list):
        return None
    for flag, value in itertools.pairwise(args):
        if flag in ("--parallel", "-np") and isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def _model_info(raw: Any) -> ModelInfo:
    entry = expect_dict(raw, "/models entry")
    model_id = opt_str(entry, "id")
    if model_id is None:
        bad(f"/models entry without an id: {str(entry)[:80]}")
    meta = opt_dict(entry, "meta")  # null while loading
    status_obj = entry.get("status")
    status: str | None = None
    error: str | None = None
    parallel: int | None = None
    if isinstance(status_obj, dict):
        status = opt_str(status_obj, "value")
        parallel = _parallel_from_args(status_obj.get("args"))
        if status_obj.get("failed") is True or status == "failed":
            # A process that exited is reported as unloaded with failed/exit_code.
            status = "failed"
            code = opt_int(status_obj, "exit_code")
            error = f"model process exited with code {code}" if code is not None else "failed"
    return ModelInfo(
        id=model_id,
        status=status,
        size_bytes=opt_int(meta, "size"),
        n_ctx=opt_int(meta, "n_ctx"),
        n_ctx_train=opt_int(meta, "n_ctx_train"),
        parallel=parallel,
        error=error,
    )


def parse_models(payload: Any) -> tuple[ModelInfo, ...]:
    """Parse ``GET /v1/models`` or the router's ``GET /models`` (``{"data": [...]}``)."""
    data = expect_list(expect_dict(payload, "/models").get("data"), "/models data")
    return tuple(_model_info(raw) for raw in data)


def is_router_payload(payload: Any) -> bool:
    """True when a ``/models`` answer has the router shape (entries carry a ``status``).

    A single-model server answers ``/models`` like ``/v1/models``: its one entry has no
    ``status``, and it adds an Ollama-style ``models`` list. A router with an empty models
    dir lists nothing, and sends no ``models`` list either.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return False
    data = payload["data"]
    if not data:
        return "models" not in payload
    return any(isinstance(e, dict) and isinstance(e.get("status"), dict) for e in data)
