"""Compose ``conf/`` into ``params.yaml``: the first DVC stage, so edits to conf/ are seen.

``dvc exp run`` composes conf/ itself (Hydra integration) but ``dvc repro`` never does.
This stage depends on conf/ and rewrites params.yaml whenever conf/ changes; every later
stage declares the params.yaml keys it reads, so DVC re-runs exactly the stages whose
keys changed. Inside ``dvc exp run`` (``DVC_EXP_BASELINE_REV`` is set) it does nothing,
leaving DVC's own composition with the experiment's ``-S`` overrides in place. Its output
is a constant stamp file, so running it never invalidates a stage by itself.

Usage: ``python -m aml_pipeline.compose [override ...]`` (Hydra override syntax).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aml_pipeline import CONF_DIR
from aml_pipeline.config import register_configs

STAMP = Path("data/.params_composed")
CONF = CONF_DIR


def compose_params(overrides: list[str]) -> str:
    """params.yaml's text, byte for byte what ``dvc exp run`` writes for the same overrides.

    Mirrors ``dvc.utils.hydra.compose_and_dump`` (compose, resolve in place, ``to_yaml``),
    so running this stage after an experiment never rewrites params.yaml by formatting
    alone; tests/test_dvc.py compares the two.
    """
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def main() -> None:
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("DVC_EXP_BASELINE_REV"):
        text = compose_params(sys.argv[1:])
        params = Path("params.yaml")
        # Rewrite only on a change: an untouched file keeps its mtime.
        if not params.exists() or params.read_text(encoding="utf-8") != text:
            params.write_text(text, encoding="utf-8")
    STAMP.write_text("params.yaml is composed from conf/ by aml_pipeline.compose\n")


if __name__ == "__main__":
    main()
