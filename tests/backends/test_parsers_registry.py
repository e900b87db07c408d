"""The registry picks one adapter class per node kind; the package stays headless."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmtui.backends import BACKENDS, Backend, backend_for
from lmtui.backends.llamacpp import LlamaCppBackend
from lmtui.backends.llamacpp_pool import LlamaCppPoolBackend
from lmtui.backends.lmstudio import LMStudioBackend
from lmtui.backends.ollama import OllamaBackend
from lmtui.backends.openai import OpenAIBackend
from lmtui.config import NodeConfig, PoolNodeConfig
from lmtui.core.model import NodeKind
from lmtui.http import TlsUpstreamPool, UpstreamPool


def test_every_kind_has_an_adapter() -> None:
    assert set(BACKENDS) == set(NodeKind)
    assert all(cls.kind is kind for kind, cls in BACKENDS.items())


@pytest.mark.parametrize(
    ("kind", "cls", "can_load"),
    [
        (NodeKind.LMSTUDIO, LMStudioBackend, True),
        (NodeKind.OLLAMA, OllamaBackend, True),
        (NodeKind.LLAMACPP, LlamaCppBackend, True),
        (NodeKind.LLAMACPP_POOL, LlamaCppPoolBackend, True),
        (NodeKind.OPENAI, OpenAIBackend, False),
    ],
)
async def test_backend_for(kind: NodeKind, cls: type[Backend], can_load: bool) -> None:
    pool = PoolNodeConfig(binary="llama-server", models_dir="/m")
    node = NodeConfig(
        name="n",
        kind=kind,
        url="http://127.0.0.1:9/",
        pool=pool if kind is NodeKind.LLAMACPP_POOL else None,
    )
    backend = backend_for(node, timeout=1.5)
    assert type(backend) is cls
    assert backend.can_load is can_load
    assert backend.can_unload is can_load  # an openai node can neither
    assert (backend.timeout, backend.base_url, backend.name) == (
        1.5,
        "http://127.0.0.1:9",
        "n",
    )
    await backend.pool.close()


def test_importing_backends_pulls_in_no_ui_library() -> None:
    code = (
        "import sys, lmtui.backends, lmtui.backends.registry;"
        "bad = [m for m in ('textual', 'aiohttp.web') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_a_backend_is_built_with_its_pool_and_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No event loop runs here, as when an Engine is built: the pool is made now and
    connects on first use; https nodes get the TLS pool; the key is read once, here."""
    monkeypatch.setenv("LMTUI_TEST_NODE_KEY", "sk-node")
    node = NodeConfig(
        name="n", kind=NodeKind.OPENAI, url="https://h:8443", api_key_env="LMTUI_TEST_NODE_KEY"
    )
    backend = backend_for(node, timeout=1.5)
    assert isinstance(backend.pool, TlsUpstreamPool)
    assert backend.api_key == "sk-node"
    assert backend.headers == {"Authorization": "Bearer sk-node"}
    monkeypatch.setenv("LMTUI_TEST_NODE_KEY", "sk-later")
    assert backend.api_key == "sk-node"
    plain = backend_for(NodeConfig(name="p", kind=NodeKind.OLLAMA, url="http://h:1"), timeout=1)
    assert isinstance(plain.pool, UpstreamPool)
    assert (plain.api_key, plain.headers) == (None, {})
