"""What a built wheel ships: the package, the console script, and the themes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling")
    # Built from a copy, so that the build never writes into the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "lmtui", "themes"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("lmtui-*.whl")
    return whl


def test_the_wheel_ships_the_themes(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "themes").glob("*.toml"))
    assert shipped, "the repository has themes to ship"
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("lmtui/themes/")) == shipped
    assert "lmtui/cli.py" in names and "lmtui/http/front.py" in names
    assert "lmtui/config/__init__.py" in names and "lmtui/config.py" not in names


def test_an_installed_wheel_finds_its_themes(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # A fresh interpreter that sees the extracted wheel first, not the checkout.
    code = (
        "import lmtui.tui.themes as t; "
        "print(t.SHIPPED_THEMES_DIR); "
        "print(len(t.load_themes(t.SHIPPED_THEMES_DIR).themes))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(target), "PATH": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(out[0]) == target / "lmtui" / "themes"
    assert int(out[1]) == len(list((ROOT / "themes").glob("*.toml")))
