"""The Makefile's install recipe (dry runs: `make -n`, nothing is installed)."""
from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(*args: str, venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "install", f"VENV={venv}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_torch_cpu_installs_pyprojects_torch_range_from_the_cpu_index_before_the_project(tmp_path):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [d for d in deps if d.startswith(("torch>", "torchvision>"))]
    lines = _dry_run("TORCH=cpu", venv=tmp_path / "v").stdout.splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "download.pytorch.org/whl/cpu" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch_line]
    assert all(f"'{w}'" in lines[torch_line] for w in wanted) and len(wanted) == 2
    project_line = next(i for i, line in enumerate(lines) if "-e '.[dev]'" in line)
    assert torch_line < project_line


def test_default_install_has_no_torch_step(tmp_path):
    out = _dry_run(venv=tmp_path / "v").stdout
    assert "download.pytorch.org" not in out and "-e '.[dev]'" in out


def test_an_unknown_torch_choice_is_an_error_naming_it(tmp_path):
    r = _dry_run("TORCH=cuda", venv=tmp_path / "v")
    assert r.returncode != 0 and "TORCH=cuda" in r.stderr and "TORCH=cpu" in r.stderr
