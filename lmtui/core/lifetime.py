"""How long an idle model stays loaded: one rule, carried out by the node where it can.

A model's idle TTL comes from, first to last: a request's own ``ttl`` for the load it caused
(LM Studio's JIT rule: the field applies to the load a request triggers, not to a model
already loaded), its ``[[models]] ttl``, ``[pool] idle_ttl_by_priority`` for its priority,
and ``[pool] idle_ttl`` (``low`` models idle out at half of it, ``high`` ones never). 0 or
nothing means never; a pinned model never idles out.

Who carries it out:

- **Ollama** keeps a model for its ``keep_alive``: lmtui loads with the TTL (or -1 for
  "forever": pinned, or no TTL, so that the server's 5-minute default never applies to a
  model lmtui manages). Since Ollama 0.1.49 a request without ``keep_alive`` keeps the
  model's; before it, every request reset it to ``OLLAMA_KEEP_ALIVE``, and a native client
  (``ollama run``, ``/api/chat`` with its own ``keep_alive``) can still change it on any
  version. The OpenAI-compatible ``/v1`` endpoints ignore a ``keep_alive`` in the body on
  every version (``openai.ChatCompletionRequest`` has no such field), so lmtui cannot fix
  the lifetime by rewriting the requests it proxies. Instead it reads the expiry ``/api/ps``
  reports and, when it fell short of what lmtui wants (:func:`expiry_short`), sets the
  lifetime again with a load call (a ``keep_alive`` with no prompt; the model stays loaded).
- **lmtui** unloads models idle past their TTL on every node that can unload (the pool
  manager's upkeep), Ollama included, whichever of the two comes first.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from lmtui.core.model import Instance, InstanceState

#: A node-held expiry further away than this reads as "forever" (Ollama reports about 290
#: years ahead for ``keep_alive < 0``).
FOREVER_AFTER_S = 365 * 86400.0


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """Idle TTLs from the config (see the module docstring for the order)."""

    #: ``[pool] idle_ttl``: seconds for ``normal`` models (``low``: half; ``high``: never).
    idle_ttl_s: float = 0.0
    #: ``[pool] idle_ttl_by_priority``: seconds per priority, replacing the rule above.
    by_priority: Mapping[str, float] = field(default_factory=_empty)
    #: ``[[models]] ttl``: seconds per model, replacing both.
    per_model: Mapping[str, float] = field(default_factory=_empty)
    #: A request's ``ttl`` for the load it caused, by ``(node, model)``.
    loaded_with: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def ttl_for(
        self, model: str, priority: str = "normal", node: str | None = None
    ) -> float | None:
        """Seconds ``model`` may stay idle (on ``node``) before it is unloaded; None: never."""
        if node is not None and (node, model) in self.loaded_with:
            ttl = self.loaded_with[(node, model)]
        elif model in self.per_model:
            ttl = self.per_model[model]
        elif priority in self.by_priority:
            ttl = self.by_priority[priority]
        elif priority == "high":
            return None
        else:
            ttl = self.idle_ttl_s / 2 if priority == "low" else self.idle_ttl_s
        return ttl if ttl > 0 else None


def wanted_ttl(
    lifetimes: Lifetimes, model: str, priority: str, *, pinned: bool, node: str | None = None
) -> float | None:
    """The idle TTL lmtui wants for ``model`` (None: keep it loaded): pins come first."""
    return None if pinned else lifetimes.ttl_for(model, priority, node)


def expiry_short(inst: Instance, ttl: float | None, now: float) -> str | None:
    """Why the node will unload ``inst`` sooner than lmtui wants, or None.

    Only a node that reports an expiry (Ollama ``expires_at``) is judged, and only an idle,
    loaded instance: while it runs requests a server holds its timer. ``ttl`` None wants it
    kept for good; otherwise the node should keep it ``ttl`` past its last use, give or take
    the poll's granularity (10% of the TTL, at least 5 s).
    """
    exp = inst.expires_at
    if exp is None or inst.busy or inst.in_flight or inst.state is not InstanceState.LOADED:
        return None
    left = exp - now
    if ttl is None:
        if left < FOREVER_AFTER_S:
            return f"the node unloads it in {max(0.0, left):.0f}s; it should stay loaded"
        return None
    last = inst.last_used if inst.last_used is not None else inst.first_seen
    if last is None:
        return None
    want = last + ttl
    if exp < want - max(5.0, 0.1 * ttl):
        return f"the node unloads it in {max(0.0, left):.0f}s; its TTL is {ttl:.0f}s"
    return None


def lifetime_refreshes(
    instances: Iterable[Instance],
    lifetimes: Lifetimes,
    priorities: Mapping[str, str],
    pinned: frozenset[str],
    now: float,
    *,
    nodes: frozenset[str],
) -> list[tuple[Instance, float | None, str]]:
    """Instances on ``nodes`` (those whose backend can set a lifetime) that their node will
    unload sooner than lmtui wants: ``(instance, wanted TTL or None for good, why)``,
    in key order. lmtui wants something only of a pinned model (kept for good) and of one
    with a TTL; a model with neither keeps whatever lifetime its node gives it."""
    out = []
    for inst in sorted(instances, key=lambda i: i.key):
        if inst.node not in nodes:
            continue
        is_pinned = inst.pinned or inst.model in pinned
        ttl = wanted_ttl(
            lifetimes,
            inst.model,
            priorities.get(inst.model, "normal"),
            pinned=is_pinned,
            node=inst.node,
        )
        if ttl is None and not is_pinned:
            continue
        why = expiry_short(inst, ttl, now)
        if why is not None:
            out.append((inst, ttl, why))
    return out
