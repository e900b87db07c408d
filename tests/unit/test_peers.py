"""Peers (``lmtui/engine/peers.py``): which models they take, their limits and budgets, and
the config checks of ``[[peers]]``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lmtui.config import ConfigError, PeerConfig, load_config
from lmtui.engine.peers import Peer, Peers


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def peer(clock: Clock | None = None, **kw: object) -> Peer:
    kw.setdefault("models", ["*"])
    cfg = PeerConfig(name=str(kw.pop("name", "p")), url="http://127.0.0.1:9", **kw)  # type: ignore[arg-type]
    return Peer(cfg, "k", clock=clock or Clock())


def test_models_by_name_and_by_pattern() -> None:
    p = peer(models=["qwen3", "embed-*", "llama-?b"])
    assert p.serves("qwen3") and p.serves("embed-small") and p.serves("llama-8b")
    assert not p.serves("qwen3-large") and not p.serves("llama-70b") and not p.serves("x")
    assert p.named_models == frozenset({"qwen3"})


def test_rename_maps_to_the_peers_name() -> None:
    p = peer(rename={"local": "gpt-4o-mini"})
    assert p.remote_name("local") == "gpt-4o-mini"
    assert p.remote_name("other") == "other"


def test_the_budget_is_a_sliding_window() -> None:
    clock = Clock()
    p = peer(clock, budget=2, budget_window=60.0)
    assert p.take(clock()) is None
    p.done(True)
    clock.t += 10
    assert p.take(clock()) is None
    p.done(True)
    why = p.take(clock())
    assert why is not None and "budget of 2 requests per 60 s is spent" in why
    assert "next in 50 s" in why
    clock.t += 51  # the first one left the window
    assert p.take(clock()) is None
    assert p.state().budget_used == 2


def test_a_refusal_spends_nothing() -> None:
    clock = Clock()
    p = peer(clock, budget=1, max_concurrent=1)
    assert p.take(clock()) is None
    assert "max_concurrent" in (p.take(clock()) or "")
    p.done(None)  # the client left: neither served nor failed
    assert (p.served, p.failed, p.in_flight) == (0, 0, 0)
    assert "budget" in (p.take(clock()) or "")


def test_max_concurrent_frees_when_done() -> None:
    clock = Clock()
    p = peer(clock, max_concurrent=2)
    assert p.take(clock()) is None and p.take(clock()) is None
    assert p.take(clock()) is not None
    p.done(False, "HTTP 500")
    assert p.take(clock()) is None
    assert p.state().last_error == "HTTP 500"
    p.done(True)
    assert p.state().last_error is None


def test_the_rate_limit() -> None:
    clock = Clock()
    p = peer(clock, rate_limit=1.0, rate_burst=2)
    for _ in range(2):
        assert p.take(clock()) is None
        p.done(True)
    why = p.take(clock())
    assert why is not None and "rate limit" in why
    clock.t += 1.0
    assert p.take(clock()) is None


def test_restore_keeps_only_the_window_and_the_budget() -> None:
    clock = Clock(10_000.0)
    p = peer(clock, budget=3, budget_window=100.0)
    p.restore([9_850.0, 9_950.0, 9_960.0, 9_970.0, 9_990.0, 20_000.0])
    # 9850 is outside the window, 20000 in the future; of the rest, the latest 3 count.
    assert p.state().budget_used == 3
    assert p.take(clock()) is not None
    clock.t = 9_960.0 + 100.0 + 0.1  # 9960 has left the window
    assert p.take(clock()) is None


def test_peers_are_tried_by_priority_then_file_order() -> None:
    cfgs = [
        PeerConfig(name="b", url="http://127.0.0.1:1", models=["*"], priority=1),
        PeerConfig(name="a", url="http://127.0.0.1:2", models=["m"], priority=1),
        PeerConfig(name="c", url="http://127.0.0.1:3", models=["m", "x"], priority=0),
    ]
    peers = Peers(cfgs, {})
    assert [p.name for p in peers.for_model("m")] == ["c", "b", "a"]
    assert [p.name for p in peers.for_model("y")] == ["b"]
    assert peers.named_models() == {"m": ["c", "a"], "x": ["c"]}
    assert not Peers([], {})


def test_the_model_cache_is_bounded() -> None:
    peers = Peers([PeerConfig(name="a", url="http://127.0.0.1:1", models=["*"])], {})
    for i in range(10_000):
        peers.for_model(f"m{i}")
    assert len(peers._for) <= 4096


def _load(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ('name = "a:b"\nurl = "http://x"\nmodels = ["*"]', "peers[0].name", "no ':'"),
        ('name = "a"\nurl = "ftp://x"\nmodels = ["*"]', "peers[0].url", "http:// or https://"),
        ('name = "a"\nurl = "http://x/v1"\nmodels = ["*"]', "peers[0].url", "without /v1"),
        ('name = "a"\nurl = "http://x"\nmodels = []', "peers[0].models", "name the models"),
        ('name = "a"\nurl = "http://x"', "peers[0].models", "missing required key"),
        (
            'name = "a"\nurl = "http://x"\nmodels = ["*"]\napi_key_env = "sk-abc"',
            "peers[0].api_key_env",
            "looks like an API key",
        ),
        ('name = "a"\nurl = "http://x"\nmodels = ["*"]\nbudget = -1', "peers[0].budget", ">= 0"),
    ],
)
def test_peer_config_errors_name_line_and_key(
    tmp_path: Path, body: str, key: str, fragment: str
) -> None:
    err = _load(tmp_path, "[[peers]]\n" + body + "\n")
    assert err.key == key, str(err)
    assert fragment in str(err)
    assert err.line >= 1


def test_peer_names_are_unique_and_apart_from_nodes(tmp_path: Path) -> None:
    err = _load(
        tmp_path,
        """
        [[nodes]]
        name = "mac"
        kind = "ollama"
        url = "http://127.0.0.1:11434"

        [[peers]]
        name = "mac"
        url = "http://127.0.0.1:4001"
        models = ["*"]
        """,
    )
    assert err.key == "peers[0].name" and "already a node's name" in err.message


def test_a_peer_url_may_have_a_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[peers]]\nname = "or"\nurl = "https://openrouter.ai/api"\nmodels = ["*"]\n',
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.peers[0].url == "https://openrouter.ai/api"
