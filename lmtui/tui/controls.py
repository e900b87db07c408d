"""Operator commands by keystroke: load, unload, pin, evict, drain, strategy, rebalance.

Each command acts on what the cursor is on: the model table's row (an instance) or the node
table's row (a node). Commands go to the engine only through ``EngineClient``; its answer is
shown as a notification, its reason for refusing (or any other failure) as an error one, and
the change itself arrives like any other through the next snapshot. Destructive commands ask
first. In read-only mode every command is hidden, and its key says so instead of running it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual import events
from textual.app import App
from textual.binding import Binding

from lmtui.core.fit import LoadFit, load_fit, replica_fit
from lmtui.core.model import Instance, Node, Snapshot
from lmtui.core.rebalance import RebalancePlan
from lmtui.core.scheduler import Strategy
from lmtui.core.units import fmt_bytes
from lmtui.engine.client import EngineClient
from lmtui.engine.commands import CommandError
from lmtui.tui.render import instance_row_key, waiting_row_key
from lmtui.tui.widgets.dialogs import ChoiceScreen, ConfirmScreen, ForceScreen
from lmtui.tui.widgets.header import ClusterHeader
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

#: After the strategy in force in the strategy picker.
IN_FORCE = "  (in force)"
#: Actions that change the cluster: hidden and refused with --read-only.
COMMANDS = frozenset({"load", "unload", "pin", "evict", "drain", "strategy", "rebalance"})
#: The load-a-replica dialog's first choice: one more replica wherever the engine places it.
#: The nodes' choices are ``NODE_CHOICE + name``, so no node's name can be taken for it.
ANYWHERE = "anywhere"
ANYWHERE_LABEL = "anywhere (lmtui places it)"
NODE_CHOICE = "node:"
#: Seconds a "read-only" notice stays up; the same key pressed again meanwhile adds no second
#: copy of it (holding a key down would otherwise stack a toast per repeat).
READ_ONLY_NOTICE_S = 3.0

BINDINGS = [
    Binding(
        "l",
        "load",
        "Load",
        id="load",
        tooltip="Load a model: on the node under the cursor, or one more replica",
    ),
    Binding("u", "unload", "Unload", id="unload", tooltip="Unload the instance under the cursor"),
    Binding("p", "pin", "Pin", id="pin", tooltip="Pin or unpin the model under the cursor"),
    Binding(
        "e",
        "evict",
        "Evict",
        id="evict",
        tooltip="Evict the instance under the cursor (only when idle and unpinned)",
    ),
    Binding(
        "d",
        "drain",
        "Drain",
        id="drain",
        tooltip="Drain the node under the cursor (no new requests), or undrain it",
    ),
    Binding("s", "strategy", "Strategy", id="strategy", tooltip="Choose the routing strategy"),
    Binding(
        "r",
        "rebalance",
        "Rebalance",
        id="rebalance",
        tooltip="Show the rebalance plan, then confirm to carry it out",
    ),
]


def plan_text(plan: RebalancePlan) -> Text:
    """The plan as the confirmation shows it: upkeep the pool manager has not done yet,
    then the proposals it never carries out by itself, each step with its reason."""
    out = Text(plan.summary())
    for title, steps in (("upkeep", plan.upkeep), ("proposed", plan.proposals)):
        if not steps:
            continue
        out.append(f"\n{title}:", style="italic")
        for step in steps:
            verb = "load  " if step.action == "load" else "unload"
            out.append(
                f"\n  {verb} {step.model} on {step.node} ({fmt_bytes(step.bytes)}): ",
                style="bold" if step.action == "load" else "",
            )
            out.append(step.reason, style="dim")
    return out


def fit_text(fit: LoadFit) -> Text:
    """The load dialog's preview of ``fit``, coloured by verdict."""
    style = {"fits": "green", "evicts": "yellow", "later": "yellow", "never": "red"}
    head = {
        "fits": "Fits in free memory",
        "evicts": "Fits after evicting",
        "later": "No room now",
        "never": "Cannot fit here",
    }[fit.verdict]
    return Text.assemble((head, f"bold {style[fit.verdict]}"), ": ", fit.detail)


def anywhere_text(fit: LoadFit) -> Text:
    """The load-a-replica dialog's preview of "anywhere": the node the engine would choose
    and what the load does there, or why no node can take it now."""
    if fit.node is None:
        head = "No node can take it now" if fit.verdict == "later" else "No node can take it"
        style = "yellow" if fit.verdict == "later" else "red"
        return Text.assemble((head, f"bold {style}"), ": ", fit.detail)
    return Text.assemble("On ", (fit.node, "bold"), ": ", fit_text(fit))


def replica_nodes(snapshot: Snapshot, model: str) -> list[Node]:
    """The nodes that can take one more replica of ``model``, in the node table's order:
    their catalogue lists it, they are routable (healthy or suspect, not drained), their
    backend can load, and they hold no replica of it yet."""
    holders = {i.node for i in snapshot.instances_of(model)}
    return [
        n
        for n in snapshot.nodes.values()
        if n.routable
        and n.no_load is None
        and n.name not in holders
        and any(a.key == model for a in n.available)
    ]


class ControlsApp(App[None]):
    """The command actions of ``LmtuiApp``, kept apart so the app module stays thin."""

    client: EngineClient
    snapshot: Snapshot | None
    clock: Callable[[], float]

    def __init__(self) -> None:
        super().__init__()
        #: True while ``_command_bound_to`` asks which binding a key has (check_action).
        self._probing = False
        #: When each refused command last said "read-only" (``time.monotonic``).
        self._read_only_told: dict[str, float] = {}

    # -- what the cursor is on -------------------------------------------------------------

    def selected_instance(self) -> Instance | None:
        key = self.query_one(ModelTable).cursor_key
        if key is None or self.snapshot is None:
            return None
        for inst in self.snapshot.instances.values():
            if instance_row_key(inst) == key:
                return inst
        return None

    def selected_node(self) -> Node | None:
        """The node table's row when it has focus, else the node of the selected instance."""
        if self.snapshot is None:
            return None
        nodes = self.query_one(NodeTable)
        if self.focused is nodes:
            key = nodes.cursor_key
            return self.snapshot.nodes.get(key) if key else None
        inst = self.selected_instance()
        return self.snapshot.nodes.get(inst.node) if inst else None

    # -- plumbing ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A command in read-only mode is hidden from the footer and the help, and not run
        # (on_key says why instead).
        return self._probing or not self.is_refused(action)

    def _command_bound_to(self, key: str) -> Binding | None:
        """The command binding ``key`` would run on this screen, were lmtui not read-only.

        Textual resolves it, so a remapped key, a key a focused input takes as text and a
        modal dialog (which hides the app's bindings) all count as they do for running it.
        """
        self._probing = True
        try:
            active = self.screen.active_bindings.get(key)
        finally:
            self._probing = False
        if active is None or active.binding.action not in COMMANDS:
            return None
        return active.binding

    def _keys_by(self, attr: str) -> dict[str, str]:
        """The keys bound now on the main screen (remaps included, read-only or not), by
        each binding's ``attr`` (``id`` or ``action``), as the footer shows them."""
        self._probing = True
        try:
            active = self.screen_stack[0].active_bindings
        finally:
            self._probing = False
        keys: dict[str, list[str]] = {}
        for ab in active.values():
            name = getattr(ab.binding, attr)
            if name is not None:
                shown = self.get_key_display(ab.binding)
                if shown not in keys.setdefault(name, []):
                    keys[name].append(shown)
        return {name: " / ".join(k) for name, k in keys.items()}

    def keys_by_binding_id(self) -> dict[str, str]:
        """Binding id -> the keys that run it now (``[keymap]`` applied)."""
        return self._keys_by("id")

    def keys_by_action(self) -> dict[str, str]:
        """Action -> the keys that run it now, for the bindings without an id too."""
        return self._keys_by("action")

    def id_bindings(self) -> list[Binding]:
        """The app's remappable bindings (those with an id), in their order."""
        return [b for b in Binding.make_bindings(self.BINDINGS) if b.id is not None]

    async def run_palette_action(self, binding: Binding) -> None:
        """Run ``binding``'s action as its key would: same checks and confirmations, and in
        read-only mode the same refusal, said out loud."""
        if self.is_refused(binding.action):
            self.say_read_only(binding)
            return
        await self.run_action(binding.action)

    def on_key(self, event: events.Key) -> None:
        """In read-only mode, a command key says it is refused rather than nothing at all."""
        if not self.client.read_only:
            return
        binding = self._command_bound_to(event.key)
        if binding is None:
            return
        self.say_read_only(binding)

    def is_refused(self, action: str) -> bool:
        """Would ``action`` be refused because lmtui is read-only?"""
        return action in COMMANDS and self.client.read_only

    def say_read_only(self, binding: Binding) -> None:
        """Tell the operator ``binding``'s command is refused (once per few seconds)."""
        now = time.monotonic()
        last = self._read_only_told.get(binding.action)
        if last is not None and now - last < READ_ONLY_NOTICE_S:
            return
        self._read_only_told[binding.action] = now
        self.notify(
            f"{binding.description}: lmtui is read-only (--read-only)",
            severity="warning",
            timeout=READ_ONLY_NOTICE_S,
        )

    def _failed(self, error: Exception) -> None:
        """A command that did not happen: the engine's reason, as an error notification.

        Anything else a command raises (a bug, a broken connection the client did not wrap)
        is shown the same way, by type and message, rather than ending the dashboard.
        """
        if isinstance(error, CommandError):
            message = error.message
        else:
            message = f"{type(error).__name__}: {error}"
        self.notify(message, severity="error", timeout=8)

    def _run(self, command: Callable[[], Awaitable[str]]) -> None:
        async def run() -> None:
            try:
                message = await command()
            except Exception as e:
                self._failed(e)
                return
            if message:  # the engine's own words for what it did
                self.notify(message, timeout=4)

        self.run_worker(run(), group="command")

    def _confirm(
        self,
        title: str,
        body: str | Text,
        command: Callable[[], Awaitable[str]],
        *,
        force: bool = False,
    ) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._run(command)

        screen = ForceScreen(title, body) if force else ConfirmScreen(title, body)
        self.push_screen(screen, answered)

    def _need(self, what: str) -> None:
        self.notify(f"put the cursor on {what} first", severity="warning", timeout=3)

    # -- the commands ------------------------------------------------------------------------

    def action_load(self) -> None:
        """On a node: pick one of its models to load there. On an instance or a waiting
        model's row: one more replica of that model, where the engine places it or on a
        node picked from those that can take it (``_load_replica``)."""
        snap = self.snapshot
        if snap is None:
            return
        if self.focused is self.query_one(NodeTable):
            node = self.selected_node()
            if node is None:
                return self._need("a node")
            if node.no_load is not None:
                self.notify(f"{node.name}: {node.no_load}", severity="error", timeout=6)
                return
            here = {i.model for i in snap.instances_on(node.name)}
            pool, pending = self.client.placement_inputs()
            now = self.clock()
            fits = {
                a.key: load_fit(snap, a.key, node.name, now, pool, pending)
                for a in node.available
                if a.key not in here
            }
            if not fits:
                self.notify(f"{node.name} lists no other model to load", timeout=3)
                return
            choices = [
                (model, f"{model}  {fmt_bytes(fit.footprint_bytes)}  {fit.short}")
                for model, fit in fits.items()
            ]
            notes = {model: fit_text(fit) for model, fit in fits.items()}

            def picked(model: str | None) -> None:
                if model:
                    # Sent even when the preview says it cannot fit now: the engine decides
                    # (the cluster may have changed) and its refusal says why.
                    self._run(lambda: self.client.load(model, node.name))

            self.push_screen(ChoiceScreen(f"Load on {node.name}", choices, notes=notes), picked)
            return
        inst = self.selected_instance()
        model = inst.model if inst is not None else self._selected_waiting_model()
        if model is None:
            return self._need("a model, or on a node in the node table")
        self._load_replica(snap, model)

    def _load_replica(self, snap: Snapshot, model: str) -> None:
        """Ask where one more replica of ``model`` goes: "anywhere" (the node the engine's
        placement would choose, with its preview), or one of the nodes that can take it,
        each with its memory-fit preview. No such node and no placement: a warning instead
        of a dialog."""
        pool, pending = self.client.placement_inputs()
        now = self.clock()
        anywhere = replica_fit(snap, model, now, pool, pending)
        fits = {
            n.name: load_fit(snap, model, n.name, now, pool, pending)
            for n in replica_nodes(snap, model)
        }
        if not fits and anywhere.node is None:
            self.notify(
                f"no node can load another replica of {model}: {anywhere.detail}",
                severity="warning",
                timeout=6,
            )
            return
        # "no room now" / "cannot fit" when no node can take it: the nodes' own words.
        where = f"on {anywhere.node}, {anywhere.short}" if anywhere.node else anywhere.short
        choices = [(ANYWHERE, f"{ANYWHERE_LABEL}  {where}")]
        notes: dict[str, str | Text] = {ANYWHERE: anywhere_text(anywhere)}
        for name, fit in fits.items():
            choices.append(
                (NODE_CHOICE + name, f"{name}  {fmt_bytes(fit.footprint_bytes)}  {fit.short}")
            )
            notes[NODE_CHOICE + name] = fit_text(fit)

        def picked(choice: str | None) -> None:
            # Sent even when the preview says it cannot fit now: the engine decides (the
            # cluster may have changed) and its refusal says why.
            if choice == ANYWHERE:
                self._run(lambda: self.client.load(model))
            elif choice and choice.startswith(NODE_CHOICE):
                node = choice[len(NODE_CHOICE) :]
                self._run(lambda: self.client.load(model, node))

        title = (
            f"Load another replica of {model}"
            if next(snap.instances_of(model), None) is not None
            else f"Load {model} (no replica yet)"
        )
        self.push_screen(ChoiceScreen(title, choices, notes=notes), picked)

    def _selected_waiting_model(self) -> str | None:
        """The model of the model table's row under the cursor when it is a model with
        requests waiting and no instance (``~queued/<model>``)."""
        key = self.query_one(ModelTable).cursor_key
        prefix = waiting_row_key("")
        return key[len(prefix) :] if key is not None and key.startswith(prefix) else None

    def action_unload(self) -> None:
        """Unload the instance under the cursor. One with requests in flight is refused by
        the engine unless forced, so its dialog says so and forcing has its own key."""
        inst = self.selected_instance()
        if inst is None:
            return self._need("a model")
        frees = f"Frees {fmt_bytes(inst.size_bytes)}."
        if inst.in_flight:
            self._confirm(
                f"Force {inst.model} off {inst.node}?",
                f"It has {inst.in_flight} request(s) in flight; forcing unloads it anyway "
                f"and cuts them off. {frees}\nTo let them finish, drain the node (d) and "
                "unload it once it is idle.",
                lambda: self.client.unload(inst.node, inst.instance_id, force=True),
                force=True,
            )
            return
        self._confirm(
            f"Unload {inst.model} from {inst.node}?",
            frees,
            lambda: self.client.unload(inst.node, inst.instance_id),
        )

    def action_evict(self) -> None:
        inst = self.selected_instance()
        if inst is None:
            return self._need("a model")
        if inst.pinned:
            # The engine refuses it; asking first and refusing after would waste a yes.
            self.notify(f"{inst.model} is pinned; unpin it first (p)", severity="error", timeout=5)
            return
        self._confirm(
            f"Evict {inst.model} from {inst.node}?",
            f"Frees {fmt_bytes(inst.size_bytes)}; refused if it is busy.",
            lambda: self.client.evict(inst.node, inst.instance_id),
        )

    def action_pin(self) -> None:
        inst = self.selected_instance()
        if inst is None:
            return self._need("a model")
        self._run(lambda: self.client.pin(inst.model, not inst.pinned))

    def action_drain(self) -> None:
        node = self.selected_node()
        if node is None:
            return self._need("a node")
        if node.drained:
            self._confirm(
                f"Undrain {node.name}?",
                "It is back in rotation: new requests and loads go there again.",
                lambda: self.client.drain(node.name, False),
            )
            return
        self._confirm(
            f"Drain {node.name}?",
            "No new requests go there; requests in flight finish.",
            lambda: self.client.drain(node.name, True),
        )

    def action_strategy(self) -> None:
        async def ask() -> None:
            try:
                current = await self.client.strategy()
            except Exception as e:
                self._failed(e)
                return

            def picked(name: str | None) -> None:
                if name and name != current:

                    async def switch() -> str:
                        message = await self.client.set_strategy(name)
                        # Only once the engine took it: a refusal leaves the header as is.
                        self.query_one(ClusterHeader).show_strategy(name)
                        return message

                    self._run(switch)

            # The cursor starts on the strategy in force, and its label says so too (the
            # cursor alone is gone as soon as it moves).
            choices = [
                (s.value, s.value + (IN_FORCE if s.value == current else "")) for s in Strategy
            ]
            self.push_screen(ChoiceScreen("Routing strategy", choices, current), picked)

        self.run_worker(ask(), group="command")

    def action_rebalance(self) -> None:
        async def plan_then_confirm() -> None:
            try:
                plan = await self.client.rebalance(apply=False)
            except Exception as e:
                self._failed(e)
                return
            if plan.empty:
                self.notify(plan.summary(), timeout=4)
                return

            async def apply() -> str:
                # The engine plans again when it applies: say what it carried out, which
                # may be nothing if the cluster changed since the plan above was shown.
                done = await self.client.rebalance(apply=True)
                return f"rebalancing: {done.summary()}" if not done.empty else done.summary()

            self._confirm("Carry out this rebalance plan?", plan_text(plan), apply)

        self.run_worker(plan_then_confirm(), group="command")
