"""The ``real`` tier: tests against real ``llama-server`` processes.

Every test here is marked ``real`` and ``slow``. Without a cached build they skip with the
command that makes one, but FAIL when ``CI=true``: ``.ci/run`` builds (or reuses) it first,
so CI cannot silently stop testing against the real server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama import LlamaBuild, LlamaServer, find_build


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def llama_build() -> LlamaBuild:
    build = find_build()
    if build is None:
        reason = (
            "no cached llama-server: run scripts/llama-server.sh once (about 5 minutes on "
            "2 cores; it builds llama-server from the llama-cpp-python sdist and caches it "
            "in ~/.cache/lmtui) to run the real-server tests"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}. CI=true, so this is an error rather than a skip.")
        pytest.skip(reason)
    return build


@pytest.fixture
def llama_servers(tmp_path: Path, llama_build: LlamaBuild) -> Iterator[list[LlamaServer]]:
    """A list to append started servers to; every one is stopped at teardown."""
    servers: list[LlamaServer] = []
    yield servers
    for s in servers:
        s.stop()
