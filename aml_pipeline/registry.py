"""MLflow tracking and registry: log a run, register the bundle, resolve a bundle reference.

A run logs a bounded set of parameters, the headline metrics, the whole resolved config as
a file, the reports and the bundle. Secrets never reach the run: params, tags and the config
file pass through :mod:`aml_pipeline.secrets` (secret keys and URL passwords masked). The bundle is registered as a model version (an MLflow
pyfunc that takes canonical transactions and returns score, threshold, alert and reasons,
:mod:`aml_pipeline.pyfunc`, with its signature and an input example), tagged
with the bundle hash, and given an alias (``models:/aml-scorer@challenger``).

Loading never goes through the pyfunc wrapper: :func:`resolve_bundle` downloads the
version's files and :class:`~aml_pipeline.bundle.ModelBundle` loads them only if the
manifest hash equals the hash recorded on the version.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
import json
import logging
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import UserError
from aml_pipeline.optional import install_hint, installed, require_extra
from aml_pipeline.secrets import redact, redacted_yaml

BUNDLE_ARTIFACT = "bundle"
HASH_TAG = "bundle_sha256"


@contextlib.contextmanager
def _quiet():
    """MLflow logs migrations, hints and progress bars on every call; keep the CLI to our summary."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def tracking_on(cfg: DictConfig) -> bool:
    """Whether this run logs to MLflow: ``mlflow.enabled``, and MLflow (the ``mlflow`` extra)
    installed. The core install runs the quickstart without it; the run keeps its bundle and
    reports, and one line on stderr says it was not logged and how to install MLflow."""
    if not cfg.mlflow.enabled:
        return False
    if installed("mlflow"):
        return True
    print(f"mlflow.enabled: MLflow is not installed, so this run is not logged or registered "
          f"({install_hint('mlflow')}; or mlflow.enabled=false)", file=sys.stderr)
    return False


def _client(cfg: DictConfig):
    require_extra("mlflow", why="the MLflow registry (task=promote, models:/ and runs:/ bundles)")
    import mlflow

    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def _experiment_id(mlflow, cfg: DictConfig) -> str:
    exp = mlflow.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        return exp.experiment_id
    location = Path(cfg.artifact_location).resolve().as_uri() if "://" not in cfg.artifact_location else cfg.artifact_location
    return mlflow.create_experiment(cfg.experiment_name, artifact_location=location)


def log_and_register(cfg: DictConfig, bundle_dir: Path, bundle_hash: str, reports: dict[str, str], params: dict[str, Any],
                     metrics: dict[str, float], tags: dict[str, str], input_example=None, alias: str | None = "",
                     parent_run_id: str | None = None) -> dict[str, Any]:
    """Log one MLflow run with the bundle and reports; register a version with an alias.

    ``alias`` defaults to ``mlflow.alias``; ``None`` registers the version without moving
    any alias (a sweep's jobs: the sweep moves it to its best job by validation PR-AUC).
    ``parent_run_id`` nests the run under a parent (one per sweep)."""
    alias = cfg.mlflow.alias if alias == "" else alias
    with _quiet():
        mlflow = _client(cfg.mlflow)
        # the mlflow extra: the pyfunc subclasses MLflow's PythonModel at its top
        from aml_pipeline.pyfunc import TransactionScorer, decide

        exp_id = _experiment_id(mlflow, cfg.mlflow)
        nested = {"parent_run_id": parent_run_id, "nested": True} if parent_run_id else {}
        with mlflow.start_run(experiment_id=exp_id, run_name=cfg.name, **nested) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in redact(dict(params)).items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            mlflow.set_tags({**redact(dict(tags)), HASH_TAG: bundle_hash})
            mlflow.log_text(redacted_yaml(cfg), "config.yaml")
            for path in reports.values():
                mlflow.log_artifact(path, artifact_path="reports")
            signature = example = None
            python_model = TransactionScorer(bundle_hash)
            if input_example is not None:  # canonical transactions in, decisions out
                example = input_example.to_pandas()
                decided = decide(ModelBundle.load(bundle_dir, expected_hash=bundle_hash), input_example).to_pandas()
                signature = mlflow.models.infer_signature(example, decided)
            info = mlflow.pyfunc.log_model(
                name=BUNDLE_ARTIFACT,
                python_model=python_model,
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                signature=signature,
                input_example=example,
                # Explicit requirements: MLflow's inference runs the model in a subprocess (~7 s).
                pip_requirements=_requirements(bundle_dir),
            )
            run_id = run.info.run_id
        client = mlflow.MlflowClient()
        name = cfg.mlflow.registered_model
        mv = mlflow.register_model(info.model_uri, name, tags={HASH_TAG: bundle_hash})
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{mv.version}"
    return {"run_id": run_id, "name": name, "version": int(mv.version), "alias": alias,
            "model_uri": uri, "experiment_id": exp_id, "bundle_sha256": bundle_hash}


def alias_version(cfg: DictConfig, alias: str) -> dict[str, Any] | None:
    """The registered version an alias points at (name, version, run id, tags), or None."""
    with _quiet():
        mlflow = _client(cfg.mlflow)
        client = mlflow.MlflowClient()
        name = cfg.mlflow.registered_model
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except Exception:  # no such model or alias: MLflow raises its own RestException
            return None
    return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags or {})}


def set_alias(cfg: DictConfig, alias: str, version: int, tags: dict[str, str] | None = None) -> None:
    """Point ``alias`` at ``version`` of the registered model (and tag that version)."""
    with _quiet():
        mlflow = _client(cfg.mlflow)
        client = mlflow.MlflowClient()
        name = cfg.mlflow.registered_model
        client.set_registered_model_alias(name, alias, str(version))
        for k, v in (tags or {}).items():
            client.set_model_version_tag(name, str(version), k, str(v))


def log_record(cfg: DictConfig, run_name: str, record: dict[str, Any], metrics: dict[str, float], tags: dict[str, str],
               artifact: str) -> str:
    """Log a record (e.g. a promotion) as its own MLflow run: tags, metrics, the JSON; its run id."""
    with _quiet():
        mlflow = _client(cfg.mlflow)
        exp_id = _experiment_id(mlflow, cfg.mlflow)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            mlflow.set_tags(redact({k: str(v) for k, v in tags.items()}))
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            mlflow.log_dict(record, artifact)
            return run.info.run_id


def start_parent_run(cfg: DictConfig, run_name: str, tags: dict[str, str]) -> str:
    """Open a run that others nest under (a sweep's parent); it stays open until :func:`end_parent_run`."""
    with _quiet():
        mlflow = _client(cfg.mlflow)
        client = mlflow.MlflowClient()
        run = client.create_run(_experiment_id(mlflow, cfg.mlflow), run_name=run_name, tags=redact(dict(tags)))
        return run.info.run_id


def end_parent_run(cfg: DictConfig, run_id: str, metrics: dict[str, float], tags: dict[str, str],
                   files: list[Path], status: str = "FINISHED") -> None:
    with _quiet():
        mlflow = _client(cfg.mlflow)
        client = mlflow.MlflowClient()
        for k, v in metrics.items():
            if v is not None:
                client.log_metric(run_id, k, float(v))
        for k, v in tags.items():
            client.set_tag(run_id, k, str(v))
        for f in files:
            if f.exists():
                client.log_artifact(run_id, str(f))
        client.set_terminated(run_id, status=status)


def _requirements(bundle_dir: Path) -> list[str]:
    """What loading the bundle needs: the stack, plus pyspark for MLlib-trained models."""
    pins = ["polars", "numpy", "lightgbm", "scikit-learn", "skops", "mlflow"]
    if any(bundle_dir.glob("*.spark.zip")):
        pins.append("pyspark")
    return [f"aml_pipeline=={metadata.version('aml_pipeline')}"] + [f"{p}=={metadata.version(p)}" for p in pins]


def _find_bundle(root: Path) -> Path:
    for manifest in sorted(root.rglob("manifest.json")):
        return manifest.parent
    raise UserError(f"no model bundle found in the downloaded artifacts ({root})")


def resolve_bundle(ref: str, cfg: DictConfig):
    """Load a bundle from a folder, ``runs:/<run id>/bundle`` or ``models:/<name>@<alias>|/<version>``."""
    if not ref:
        raise UserError("no bundle given: set bundle=<folder> or bundle=models:/<name>@<alias>")
    if "://" not in ref and ":/" not in ref:
        if not Path(ref).exists():
            raise UserError(f"bundle {ref}: no such folder (train one with task=train, or use models:/<name>@<alias>)")
        return ModelBundle.load(ref)
    with _quiet():
        mlflow = _client(cfg.mlflow)
        client = mlflow.MlflowClient()
        registry: dict[str, Any] = {}
        expected = None
        if ref.startswith("models:/"):
            spec = ref[len("models:/"):]
            try:
                if "@" in spec:
                    name, alias = spec.split("@", 1)
                    mv = client.get_model_version_by_alias(name, alias)
                else:
                    name, version = spec.split("/", 1)
                    mv = client.get_model_version(name, version)
            except Exception as exc:  # the registry's own message names what is missing
                raise UserError(f"bundle {ref}: {str(exc).splitlines()[0]}") from None
            expected = mv.tags.get(HASH_TAG)
            if not expected:
                raise UserError(f"bundle {ref}: version {mv.version} has no {HASH_TAG} tag; refusing to load an unverified bundle")
            registry = {"name": mv.name, "version": mv.version, "run_id": mv.run_id}
            uri = f"models:/{mv.name}/{mv.version}"
        elif ref.startswith("runs:/"):
            run_id = ref[len("runs:/"):].split("/", 1)[0]
            expected = client.get_run(run_id).data.tags.get(HASH_TAG)
            registry = {"run_id": run_id}
            uri = ref
        else:
            raise UserError(f"bundle {ref}: use a folder, runs:/<run id>/bundle or models:/<name>@<alias>")
        target = Path(tempfile.mkdtemp(prefix="aml_bundle_"))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    return ModelBundle.load(_find_bundle(local), expected_hash=expected, registry=registry)


def write_registration(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
