"""How a simulated server behaves over time: one small, readable model, all pure functions.

Durations here are *simulated* seconds; the node multiplies them by its ``time_scale``
before sleeping. Nothing in this module reads a clock or does I/O.

The numbers are rough but shaped like the real thing on an Apple Silicon or consumer GPU
box: loading is dominated by reading weights from disk, the first token waits for the
prompt to be processed, and continuous batching makes each slot slower but the sum faster.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

#: Fixed cost of any load (process/context setup, warm-up), simulated seconds.
LOAD_OVERHEAD_S = 0.5
#: How long a llama.cpp router's model process takes to exit after an unload, simulated
#: seconds: the router answers at once and lists the model loaded meanwhile (measured
#: ~0.1 s for a 270M model on a CPU; bigger models free more memory and take longer).
UNLOAD_S = 1.0
#: Each extra concurrent slot slows every slot by this fraction (aggregate still grows:
#: 4 slots give 4 / 1.45 = 2.8x the single-slot throughput).
BATCH_SLOWDOWN = 0.15
#: Completion length when the request does not cap it: uniform in this range.
DEFAULT_COMPLETION_TOKENS = (64, 256)
#: ~4 characters per token for English text, the usual rule of thumb.
CHARS_PER_TOKEN = 4
#: Chat templates add a few tokens per message (role markers).
TOKENS_PER_MESSAGE = 4


def load_time_s(size_gb: float, disk_gb_per_s: float) -> float:
    """Seconds to load a model: fixed overhead plus reading its weights."""
    return LOAD_OVERHEAD_S + size_gb / max(disk_gb_per_s, 1e-6)


def prefill_time_s(prompt_tokens: int, prefill_tok_per_s: float) -> float:
    """Time to first token: processing the prompt."""
    return prompt_tokens / max(prefill_tok_per_s, 1e-6)


def per_slot_decode_rate(base_tok_per_s: float, active: int) -> float:
    """Tokens/s of one slot when ``active`` slots generate at once."""
    return base_tok_per_s / (1.0 + BATCH_SLOWDOWN * max(0, active - 1))


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` at ~4 characters a token (at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def prompt_tokens_of_messages(messages: Iterable[object]) -> int:
    """Estimate prompt tokens of an OpenAI/Ollama ``messages`` list, tolerating odd shapes."""
    total = 0
    for m in messages:
        total += TOKENS_PER_MESSAGE
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += estimate_tokens(content)
        elif isinstance(content, list):  # typed content parts
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += estimate_tokens(part["text"])
    return max(1, total)


def completion_tokens(max_tokens: int | None, rng: random.Random) -> tuple[int, str]:
    """How many tokens a reply has and why it stopped (``"stop"`` or ``"length"``).

    The model "wants" a seeded random length; ``max_tokens`` cuts it short.
    """
    natural = rng.randint(*DEFAULT_COMPLETION_TOKENS)
    if max_tokens is not None and max_tokens > 0 and max_tokens <= natural:
        return max_tokens, "length"
    return natural, "stop"


def chunk_tokens(
    real_tok_per_s: float, remaining: int, total: int, *, min_interval_s: float, min_chunks: int
) -> int:
    """Tokens to emit in the next chunk.

    Big enough that chunks are at least ``min_interval_s`` apart in real time (CPU stays
    low when ``time_scale`` makes tokens tiny), small enough that a reply still comes in
    about ``min_chunks`` pieces so a stream looks like a stream.
    """
    by_time = max(1, math.ceil(real_tok_per_s * min_interval_s))
    by_count = max(1, math.ceil(total / max(1, min_chunks)))
    return max(1, min(by_time, by_count, remaining))


@dataclass(frozen=True, slots=True)
class Resident:
    """A model instance occupying memory, as the eviction planner sees it."""

    instance_id: str
    size_gb: float
    busy: bool
    last_used: float


@dataclass(frozen=True, slots=True)
class RoomPlan:
    """The answer of :func:`plan_room`: instances to unload first, or why it cannot fit."""

    evict: tuple[str, ...] = ()
    refused: str | None = None
    #: Refused because ``max_count`` instances are resident and none is idle: a transient
    #: refusal (a llama.cpp router answers "model limit reached, try again later").
    limit_reached: bool = False

    @property
    def ok(self) -> bool:
        return self.refused is None


def plan_room(
    residents: Iterable[Resident],
    need_gb: float,
    capacity_gb: float,
    *,
    max_count: int = 0,
    evict_for_memory: bool = False,
    evict_for_count: bool = False,
) -> RoomPlan:
    """Which idle instances to unload (least recently used first) so ``need_gb`` fits.

    - ``evict_for_memory``: unload idle instances until the memory fits (Ollama);
      otherwise a load that does not fit is refused (LM Studio, llama.cpp).
    - ``max_count`` > 0 caps how many instances may be resident (Ollama
      MAX_LOADED_MODELS, llama.cpp ``--models-max``); ``evict_for_count`` unloads the LRU
      idle one to stay under it, otherwise the load is refused.
    Busy instances are never unloaded: real servers wait or refuse instead.
    """
    if need_gb > capacity_gb:
        return RoomPlan(refused=f"needs {need_gb:.1f} GB, the node has {capacity_gb:.1f} GB")
    res = list(residents)
    used = sum(r.size_gb for r in res)
    count = len(res)
    idle = sorted((r for r in res if not r.busy), key=lambda r: r.last_used)
    evict: list[str] = []

    def over() -> tuple[bool, bool]:
        mem = used + need_gb > capacity_gb + 1e-9
        cnt = max_count > 0 and count + 1 > max_count
        return mem, cnt

    mem_over, cnt_over = over()
    while mem_over or cnt_over:
        if (mem_over and not evict_for_memory) or (cnt_over and not evict_for_count):
            break
        if not idle:
            break
        victim = idle.pop(0)
        evict.append(victim.instance_id)
        used -= victim.size_gb
        count -= 1
        mem_over, cnt_over = over()
    if mem_over:
        free = capacity_gb - used
        return RoomPlan(refused=f"needs {need_gb:.1f} GB, only {max(free, 0):.1f} GB free")
    if cnt_over:
        return RoomPlan(refused=f"{max_count} models already loaded", limit_reached=True)
    return RoomPlan(evict=tuple(evict))
