"""DVC stage entry point: ``python -m aml_pipeline.stage <task>`` runs one task from params.yaml.

DVC's Hydra integration composes ``conf/`` (plus any ``dvc exp run -S`` overrides) into
``params.yaml``; stages must read that file and nothing else, or an experiment's overrides
would be lost. The file is validated against the same typed schema as the command line,
so a bad value fails here exactly as it would there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aml_pipeline.config import AppConfig, Task
from aml_pipeline.errors import UserError
from aml_pipeline.progress import fail

PARAMS = Path("params.yaml")


def load_params(path: Path = PARAMS):
    if not path.is_file():
        raise UserError(f"{path} is missing: run `python -m aml_pipeline.compose` (or `dvc repro`) first")
    raw = OmegaConf.load(path)
    for key in ("hydra", "experiment", "hparams_search"):
        raw.pop(key, None)
    try:
        return OmegaConf.merge(OmegaConf.structured(AppConfig), raw)
    except OmegaConfBaseException as exc:
        raise UserError(f"{path}: {str(exc).splitlines()[0]} (full_key: {exc.full_key})") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    allowed = [t.value for t in Task]
    if len(args) != 1 or args[0] not in allowed:
        fail(f"usage: python -m aml_pipeline.stage <task>; task is one of {', '.join(allowed)}")
    try:
        cfg = load_params()
        cfg.task = args[0]
        from aml_pipeline.tasks import run_task

        run_task(cfg)
    except UserError as exc:
        fail(str(exc), exc.exit_code)


if __name__ == "__main__":
    main()
