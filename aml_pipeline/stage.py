"""DVC stage entry point: ``python -m aml_pipeline.stage <task>`` runs one task from params.yaml.

DVC's Hydra integration composes ``conf/`` (plus any ``dvc exp run -S`` overrides) into
``params.yaml``; stages must read that file and nothing else, or an experiment's overrides
would be lost. The file is validated against the same typed schema as the command line,
so a bad value fails here exactly as it would there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aml_pipeline.config import AppConfig, Task
from aml_pipeline.errors import UserError
from aml_pipeline.layout import Layout
from aml_pipeline.progress import fail
from aml_pipeline.registry import write_registration
from aml_pipeline.tasks import run_task

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


def anchor_mlflow(cfg, root: str | None = None) -> None:
    """Keep a relative MLflow store in the project even when DVC runs the stage elsewhere.

    ``dvc exp run --queue`` / ``--temp`` run stages in a throwaway copy under
    ``.dvc/tmp/exps``; a relative ``sqlite:///mlruns/mlflow.db`` or artifact folder would be
    written there and deleted with it, leaving registered.json pointing at a run that no
    longer exists. DVC sets ``DVC_ROOT`` to the real project for exactly this, so relative
    locations are resolved against it. Remote and absolute locations are left alone.
    """
    root = root or os.environ.get("DVC_ROOT")
    if not root or Path(root).resolve() == Path.cwd().resolve():
        return
    uri = str(cfg.mlflow.tracking_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        cfg.mlflow.tracking_uri = "sqlite:///" + str(Path(root).resolve() / uri[len("sqlite:///"):])
    elif "://" not in uri and not Path(uri).is_absolute():
        cfg.mlflow.tracking_uri = str(Path(root).resolve() / uri)
    location = str(cfg.mlflow.artifact_location)
    if "://" not in location and not Path(location).is_absolute():
        cfg.mlflow.artifact_location = str(Path(root).resolve() / location)


def run_stage(cfg) -> None:
    """Run one task so that every out dvc.yaml declares for it exists afterwards.

    monitor judges ``data/scores/test.parquet`` (evaluate's decisions) against
    ``models/bundle`` unless params.yaml names others, and records drift in monitor.json
    instead of exiting 3: in a pipeline, drift is a result to compare across experiments.

    evaluate registers the bundle in MLflow and records that in models/registered.json
    only when ``mlflow.enabled``; as a DVC out the file must exist either way, and must
    not survive from an earlier run that did register. So it is removed first and, with
    MLflow off, replaced by a record saying nothing was registered.
    """
    if cfg.task == Task.monitor.value:  # the test window evaluate scored, against the bundle it trained
        layout = Layout.of(cfg)
        cfg.bundle = cfg.bundle or str(layout.bundle)
        cfg.input = cfg.input or str(layout.data_dir / "scores" / "test.parquet")
        cfg.monitor.fail_on_drift = False  # drift is a metric in monitor.json here, not a failed pipeline
    registration = Layout.of(cfg).registration if cfg.task == Task.evaluate.value else None
    if registration is not None:
        registration.unlink(missing_ok=True)
    run_task(cfg)
    if registration is not None and not registration.exists():
        write_registration(registration, {"registered": False, "reason": "mlflow.enabled is false"})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    allowed = [t.value for t in Task]
    if len(args) != 1 or args[0] not in allowed:
        fail(f"usage: python -m aml_pipeline.stage <task>; task is one of {', '.join(allowed)}")
    try:
        cfg = load_params()
        cfg.task = args[0]
        anchor_mlflow(cfg)
        run_stage(cfg)
    except UserError as exc:
        fail(str(exc), exc.exit_code)


if __name__ == "__main__":
    main()
