"""Lineage: what produced a bundle, so any score can be traced to config, data and code.

- config hash: SHA-256 of the resolved config minus the keys that only say *where* or
  *which stage* (paths, task, bundle/input/output), so the same experiment run from another
  folder or stage by stage hashes the same; secret keys (``deploy.api_key``, any ``*password``,
  ``*secret``, ``*token``, ``*api_key``) are left out and URL passwords masked
  (:mod:`aml_pipeline.secrets`), so rotating a key or a password keeps the hash;
- data fingerprint: SHA-256 of the validated data file;
- code version: the package version and the git commit (with a ``-dirty`` mark).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import aml_pipeline
from aml_pipeline.secrets import without_secrets

RUNTIME_KEYS = ("paths", "task", "bundle", "input", "output", "hydra")


def config_hash(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in RUNTIME_KEYS:
        data.pop(key, None)
    text = OmegaConf.to_yaml(OmegaConf.create(without_secrets(data)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    root = Path(aml_pipeline.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def lineage(cfg: DictConfig, data_file: Path) -> dict:
    return {
        "config_hash": config_hash(cfg),
        "data_fingerprint": file_fingerprint(data_file),
        "git_commit": git_commit(),
        "package_version": aml_pipeline.__version__,
        "experiment": cfg.name,
    }
