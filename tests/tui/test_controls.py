"""Operator keys: each sends the right command for what the cursor is on, asks first when
destructive, and is gone in read-only mode."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from textual.widgets import OptionList, Static

from lmtui.core.model import AvailableModel, GiB
from lmtui.core.rebalance import PlanStep, RebalancePlan
from lmtui.engine import commands as cmd
from lmtui.tui.app import build_app
from lmtui.tui.widgets.dialogs import ChoiceScreen, ConfirmScreen, ForceScreen
from lmtui.tui.widgets.header import ClusterHeader
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import FIXED_NOW, FakeClient, fixed_cluster, instance, next_version
from .test_app import SIZE, started, until


def app_for(**kw):  # type: ignore[no-untyped-def]
    snap, events = fixed_cluster()
    nodes = dict(snap.nodes)
    nodes["mac-studio"] = replace(
        nodes["mac-studio"],
        available=(
            AvailableModel("gemma-3-12b", 8 * GiB),
            AvailableModel("mistral-small-24b", 14 * GiB),
        ),
    )
    snap = replace(snap, nodes=nodes)
    client = FakeClient(snap, events, **kw)
    return build_app(client, clock=lambda: FIXED_NOW), client


async def test_drain_asks_first_and_cancel_sends_nothing() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("d")  # the node table has focus, cursor on mac-studio
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert client.commands == []
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: client.commands == [("drain", "mac-studio")])


async def test_pin_unload_and_evict_act_on_the_instance_under_the_cursor() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("p")  # row 0: gemma-3-12b on mac-studio, not pinned
        await until(pilot, lambda: ("pin", "gemma-3-12b") in client.commands)
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")
        await until(pilot, lambda: ("unload", "mac-studio", "gemma-3-12b") in client.commands)
        await pilot.press("down", "e")  # row 1: llama3.1:8b on gpu-box
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: ("evict", "gpu-box", "llama3.1:8b") in client.commands)


async def test_load_on_a_node_offers_its_models_not_yet_loaded_there() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        options = app.screen.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert len(labels) == 1 and labels[0].startswith("mistral-small-24b")
        await pilot.press("enter")
        await until(pilot, lambda: client.commands == [("load", "mistral-small-24b", "mac-studio")])


async def test_load_on_a_node_that_cannot_load_says_why_and_offers_nothing() -> None:
    """An LM Studio 0.3 node: the toast said "loading" and the load failed in the log."""
    snap, events = fixed_cluster()
    nodes = dict(snap.nodes)
    why = "LM Studio before 0.4 has no REST load or unload"
    nodes["mac-studio"] = replace(
        nodes["mac-studio"], available=(AvailableModel("mistral-small-24b", GiB),), no_load=why
    )
    client = FakeClient(replace(snap, nodes=nodes), events)
    app = build_app(client, clock=lambda: FIXED_NOW)
    shown: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.notify = lambda message, **kw: shown.append(str(message))  # type: ignore[method-assign]
        await pilot.press("l")
        await until(pilot, lambda: bool(shown))
        assert shown == [f"mac-studio: {why}"]
        assert not isinstance(app.screen, ChoiceScreen)
        assert client.commands == []


async def test_load_on_a_waiting_models_row_loads_that_model() -> None:
    snap, events = fixed_cluster()
    # "aaa-model" sorts first: the model table's cursor starts on its row.
    snap = replace(snap, queue_depth={"aaa-model": 2})
    client = FakeClient(snap, events)
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        assert models.shown_keys[0] == "~queued/aaa-model"
        models.focus()
        await pilot.pause()
        await pilot.press("u")  # no instance there: nothing to unload
        await pilot.press("l")
        # No node's catalogue is known (the fixed cluster lists none), so no node is offered
        # by name; the engine may still place it on one that may have it.
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert app.screen.title_text == "Load aaa-model (no replica yet)"
        options = app.screen.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels == ["anywhere (lmtui places it)  on mac-studio, fits"]
        await pilot.press("enter")
        await until(pilot, lambda: ("load", "aaa-model", None) in client.commands)
        assert not any(c[0] == "unload" for c in client.commands)


async def test_strategy_is_chosen_from_a_list() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        labels = [str(o.prompt) for o in app.screen.query_one(OptionList).options]
        assert labels[0] == "efficiency  (in force)"
        assert labels[1] == "spread"
        header = app.query_one(ClusterHeader)
        assert "strategy efficiency" in header.totals_text
        await pilot.press("down", "enter")  # from efficiency (current) to spread
        await until(pilot, lambda: client.commands == [("strategy", "spread")])
        await until(pilot, lambda: "strategy spread" in header.totals_text)


async def test_a_refused_strategy_leaves_the_header_as_it_was() -> None:
    app, client = app_for()

    async def refuse(command: cmd.Command) -> cmd.Result:
        raise cmd.CommandError("strategy switching is off", 409)

    client._send = refuse  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        header = app.query_one(ClusterHeader)
        await until(pilot, lambda: "strategy efficiency" in header.totals_text)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("down", "enter")
        await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen))
        await pilot.pause(0.1)
        assert "strategy efficiency" in header.totals_text


async def test_rebalance_shows_the_plan_before_applying_it() -> None:
    app, client = app_for()
    plan = RebalancePlan(
        steps=(
            PlanStep("load", "gpu-box", "gemma-3-12b", "pinned", 8 * GiB),
            PlanStep("load", "gpu-box", "qwen3-8b", "all replicas busy", 5 * GiB, proposed=True),
        ),
        loads_bytes=13 * GiB,
    )

    async def rebalance(*, apply: bool = False) -> RebalancePlan:
        client.commands.append(("rebalance", apply))
        return plan

    client.rebalance = rebalance  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#confirm-body").render())
        assert "load" in body and "gemma-3-12b on gpu-box" in body
        # Upkeep first, then what the pool manager never does by itself.
        assert body.index("upkeep:") < body.index("gemma-3-12b") < body.index("proposed:")
        assert body.index("proposed:") < body.index("qwen3-8b on gpu-box")
        assert client.commands == [("rebalance", False)]
        await pilot.press("y")
        await until(pilot, lambda: client.commands == [("rebalance", False), ("rebalance", True)])


async def test_read_only_hides_and_refuses_every_command() -> None:
    app, client = app_for(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        shown = {
            b.binding.id
            for b in app.active_bindings.values()
            if app.check_action(b.binding.action, ()) is not False
        }
        assert not shown & {"load", "unload", "pin", "evict", "drain", "strategy", "rebalance"}
        await pilot.press("d", "l", "s", "r", "d")
        await pilot.pause(0.1)
        assert client.commands == []
        assert not isinstance(app.screen, (ConfirmScreen, ChoiceScreen))
        # Not silently: each key says it is refused, once (the second d adds no copy).
        told = [(n.message, n.severity) for n in app._notifications]
        assert told == [
            (f"{what}: lmtui is read-only (--read-only)", "warning")
            for what in ("Drain", "Load", "Strategy", "Rebalance")
        ]


async def test_read_only_says_nothing_for_keys_that_are_not_commands() -> None:
    app, client = app_for(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("down", "x")
        await pilot.press("slash", "p")  # text in the filter, not the pin key
        await pilot.pause(0.1)
        assert app.query_one(ModelTable).filter == "p"
        assert list(app._notifications) == []


async def test_a_refused_command_shows_the_engines_reason_as_an_error() -> None:
    app, client = app_for()

    async def refuse(command: cmd.Command) -> cmd.Result:
        raise cmd.CommandError("gemma-3-12b on mac-studio is loading; try again", 409)

    client._send = refuse  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("p")
        await until(pilot, lambda: bool(app._notifications))
        [note] = app._notifications
        assert (note.message, note.severity) == (
            "gemma-3-12b on mac-studio is loading; try again",
            "error",
        )


async def test_an_unexpected_failure_is_an_error_notice_and_the_dashboard_stays() -> None:
    app, client = app_for()

    async def broken(command: cmd.Command) -> cmd.Result:
        raise ConnectionResetError("peer went away")

    client._send = broken  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("p")
        await until(pilot, lambda: bool(app._notifications))
        [note] = app._notifications
        assert note.severity == "error"
        assert note.message == "ConnectionResetError: peer went away"
        assert app.is_running


async def test_success_says_what_the_engine_answered() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("p")
        await until(pilot, lambda: bool(app._notifications))
        [note] = app._notifications
        assert (note.message, note.severity) == ("pin gemma-3-12b", "information")


async def test_a_rebalance_with_nothing_left_to_do_does_not_claim_to_rebalance() -> None:
    app, client = app_for()
    shown = RebalancePlan(
        steps=(PlanStep("load", "gpu-box", "gemma-3-12b", "pinned", 8 * GiB),), loads_bytes=8 * GiB
    )

    async def rebalance(*, apply: bool = False) -> RebalancePlan:
        return RebalancePlan() if apply else shown  # the cluster caught up meanwhile

    client.rebalance = rebalance  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: bool(app._notifications))
        [note] = app._notifications
        assert note.message.startswith("nothing to do")


async def test_the_cursor_follows_its_model_when_rows_come_and_go_above_it() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        models.focus()
        await pilot.press("down")  # row 1: llama3.1:8b on gpu-box
        assert models.cursor_key == "gpu-box/llama3.1:8b"

        # Two loads sort in above it: by position the cursor would now be on aaa-model.
        snap = client.snapshot()
        above = [instance("old-mini", "aaa-model"), instance("gpu-box", "gemma-2b")]
        client.push(next_version(snap, instances=[*snap.instances.values(), *above]))
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert models.shown_keys.index("gpu-box/llama3.1:8b") == 3
        assert models.cursor_key == "gpu-box/llama3.1:8b"

        # An unload above it: by position the cursor would slide onto the next row.
        snap = client.snapshot()
        kept = [i for i in snap.instances.values() if i.model not in ("aaa-model", "gemma-2b")]
        client.push(next_version(snap, instances=kept))
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert models.shown_keys.index("gpu-box/llama3.1:8b") == 1
        assert models.cursor_key == "gpu-box/llama3.1:8b"

        await pilot.press("p")
        await until(pilot, lambda: client.commands == [("pin", "llama3.1:8b")])


async def test_the_cursor_follows_its_node_when_a_node_above_it_goes() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        nodes = app.query_one(NodeTable)
        await pilot.press("down")  # gpu-box
        assert nodes.cursor_key == "gpu-box"
        snap = client.snapshot()
        rest = {k: n for k, n in snap.nodes.items() if k != "mac-studio"}
        client.push(replace(snap, version=snap.version + 1, nodes=MappingProxyType(rest)))
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert nodes.shown_keys == ["gpu-box", "old-mini"]
        assert nodes.cursor_key == "gpu-box"
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: client.commands == [("drain", "gpu-box")])


def busy_app():  # type: ignore[no-untyped-def]
    """The fixed cluster with two requests in flight on gemma-3-12b (row 0 of the models)."""
    app, client = app_for()
    snap = client.snapshot()
    key = ("mac-studio", "gemma-3-12b")
    busy = replace(snap.instances[key], in_flight=2, slots_busy=2)
    client._snap = replace(snap, instances={**snap.instances, key: busy})
    return app, client


async def test_unloading_a_busy_instance_says_so_and_needs_f_to_force() -> None:
    app, client = busy_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ForceScreen))
        body = str(app.screen.query_one("#confirm-body").render())
        assert "2 request(s) in flight" in body
        # The yes of every other dialog does not force.
        await pilot.press("y", "enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ForceScreen) and client.sent == []
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ForceScreen))
        assert client.sent == []
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ForceScreen))
        await pilot.press("f")
        await until(pilot, lambda: bool(client.sent))
        assert client.sent == [cmd.Unload(node="mac-studio", instance_id="gemma-3-12b", force=True)]


async def test_unloading_an_idle_instance_does_not_force() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: bool(client.sent))
        assert client.sent == [cmd.Unload(node="mac-studio", instance_id="gemma-3-12b")]


async def test_undrain_asks_first_too() -> None:
    app, client = app_for()
    snap = client.snapshot()
    mac = replace(snap.nodes["mac-studio"], drained=True)
    client._snap = replace(snap, nodes={**snap.nodes, "mac-studio": mac})
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Undrain mac-studio" in app.screen.title_text
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert client.commands == []
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: client.commands == [("undrain", "mac-studio")])


async def test_evicting_a_pinned_model_is_refused_at_once_without_a_dialog() -> None:
    app, client = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        models.focus()
        await pilot.pause()
        await pilot.press("end", "ctrl+end")  # the last row: qwen3-30b-a3b, pinned
        assert models.cursor_key == "mac-studio/qwen3-30b-a3b"
        await pilot.press("e")
        await until(pilot, lambda: bool(app._notifications))
        assert not isinstance(app.screen, ConfirmScreen)
        [note] = app._notifications
        assert (note.message, note.severity) == (
            "qwen3-30b-a3b is pinned; unpin it first (p)",
            "error",
        )
        assert client.commands == []


async def test_the_load_dialog_previews_the_memory_fit_of_the_highlighted_model() -> None:
    snap, events = fixed_cluster()
    nodes = dict(snap.nodes)
    # mac-studio: 192 GiB, 25.3 loaded (qwen3 pinned, gemma idle for two hours).
    nodes["mac-studio"] = replace(
        nodes["mac-studio"],
        available=(
            AvailableModel("mistral-small-24b", 14 * GiB),
            AvailableModel("big-170", 170 * GiB),
            AvailableModel("huge-300", 300 * GiB),
        ),
    )
    client = FakeClient(replace(snap, nodes=MappingProxyType(nodes)), events)
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        options = app.screen.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert [label.split()[-2:] for label in labels] == [
            ["GB", "fits"],
            ["evicts", "1"],
            ["cannot", "fit"],
        ]

        def note() -> str:
            return str(app.screen.query_one("#choice-note", Static).render())

        await until(pilot, lambda: note().startswith("Fits in free memory"))
        await pilot.press("down")
        await until(pilot, lambda: note().startswith("Fits after evicting"))
        assert "unloads gemma-3-12b" in note()
        await pilot.press("down")
        await until(pilot, lambda: note().startswith("Cannot fit here"))
        assert "qwen3-30b-a3b" in note() and "pinned" in note()
        await pilot.press("up", "enter")
        await until(pilot, lambda: ("load", "big-170", "mac-studio") in client.commands)
