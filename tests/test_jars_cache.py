"""Where the Maven jars are cached: the clone's .cache/ for tests and CI, the user's cache
folder for an installed package (never site-packages), $AML_CACHE_DIR above both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from aml_pipeline.streaming.jars import cache_dir
from tests.conftest import ROOT, cli_env

PRINT_CACHE = "from aml_pipeline.streaming.jars import cache_dir; print(cache_dir())"


def _cache_of_installed_copy(tmp_path: Path, **env: str) -> Path:
    """cache_dir() of the package copied into a site-packages-like folder outside any clone."""
    site = tmp_path / "venv" / "lib" / "site-packages"
    if not (site / "aml_pipeline").is_dir():
        shutil.copytree(ROOT / "aml_pipeline", site / "aml_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    base = {k: v for k, v in cli_env().items() if k not in ("AML_CACHE_DIR", "XDG_CACHE_HOME")}
    res = subprocess.run([sys.executable, "-c", PRINT_CACHE], cwd=tmp_path, capture_output=True, text=True,
                         env={**base, "PYTHONPATH": str(site), "HOME": str(tmp_path / "home"), **env}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return Path(res.stdout.strip())


def test_a_clone_caches_in_its_own_dot_cache(monkeypatch):
    monkeypatch.delenv("AML_CACHE_DIR", raising=False)
    assert cache_dir() == ROOT / ".cache"


def test_aml_cache_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("AML_CACHE_DIR", str(tmp_path / "jars-here"))
    assert cache_dir() == tmp_path / "jars-here"


def test_an_installed_package_caches_in_the_users_cache_folder(tmp_path):
    assert _cache_of_installed_copy(tmp_path) == tmp_path / "home" / ".cache" / "aml_pipeline"
    assert _cache_of_installed_copy(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg")) == tmp_path / "xdg" / "aml_pipeline"
    assert _cache_of_installed_copy(tmp_path, AML_CACHE_DIR=str(tmp_path / "mine")) == tmp_path / "mine"
