"""Engines behind one interface: tasks ask ``engine._target_`` for the work, never its name.

The Spark engine's own outputs are checked against the polars engine's in
tests/test_spark_parity.py, tests/test_spark_models.py and tests/test_promote.py; these
tests check the seam itself: what config builds, what a task may import, and who trains.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aml_pipeline.build import build
from aml_pipeline.engines import Engine, engine_of, trainer_of
from aml_pipeline.engines.polars import PolarsEngine
from aml_pipeline.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "aml_pipeline"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_default_engine_is_polars(compose_cfg):
    engine = engine_of(compose_cfg([]))
    assert type(engine) is PolarsEngine and engine.name == "polars"


def test_engine_spark_builds_the_spark_engine(compose_cfg):
    from aml_pipeline.spark.engine import SparkEngine

    engine = engine_of(compose_cfg(["engine=spark", "engine.master='local[2]'"]))
    assert type(engine) is SparkEngine and isinstance(engine, Engine)


def test_an_engine_target_outside_the_registry_is_refused_naming_the_allowed(compose_cfg):
    cfg = compose_cfg(["engine._target_=aml_pipeline.serving.server.os.system"])
    with pytest.raises(ConfigError, match=r"engine\._target_=.*allowed for engine: "
                                          r"aml_pipeline\.engines\.polars\.PolarsEngine, aml_pipeline\.spark\.engine\.SparkEngine"):
        engine_of(cfg)


def test_a_classifier_trains_on_its_own_engine_else_the_configured_one(compose_cfg):
    from aml_pipeline.spark.engine import SparkEngine

    polars_cfg = compose_cfg(["model=spark_gbt"])
    assert type(trainer_of(polars_cfg, build(polars_cfg.model, "model"))) is SparkEngine  # MLlib trains in Spark
    lgbm_cfg = compose_cfg(["model=lightgbm"])
    assert type(trainer_of(lgbm_cfg, build(lgbm_cfg.model, "model"))) is PolarsEngine
    spark_cfg = compose_cfg(["model=lightgbm", "engine=spark"])
    assert type(trainer_of(spark_cfg, build(spark_cfg.model, "model"))) is SparkEngine


def test_every_engine_implements_every_stage():
    from aml_pipeline.spark.engine import SparkEngine

    stages = {name for name, value in vars(Engine).items() if getattr(value, "__isabstractmethod__", False)}
    assert stages == {"data", "features", "train", "score", "rescorer"}
    for cls in (PolarsEngine, SparkEngine):
        assert not cls.__abstractmethods__, f"{cls.__name__} leaves {sorted(cls.__abstractmethods__)} unimplemented"


def test_no_task_imports_an_engine_or_branches_on_its_name():
    """Tasks reach engines through engines.engine_of/trainer_of only (no import of spark/,
    no test of ``engine.name``), so adding an engine never edits a task."""
    offenders = []
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        spark = sorted(m for m in _imports(path) if m == "aml_pipeline.spark" or m.startswith("aml_pipeline.spark."))
        if spark:
            offenders.append(f"{path.name} imports {spark}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value in ("polars", "spark") for o in operands):
                    offenders.append(f"{path.name}:{node.lineno} compares with an engine's name")
    assert not offenders, offenders


@pytest.mark.parametrize("layer", ["models", "features", "validation", "sources", "evaluation", "monitoring",
                                   "engines", "lifecycle", "export", "store", "serving", "cases"])
def test_lower_layers_never_import_the_spark_engine(layer):
    """The Spark engine sits above the code it compiles; only it, the Spark streaming scorer
    and the command line reach into aml_pipeline.spark."""
    paths = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else sorted((PACKAGE / layer).rglob("*.py"))
    assert paths
    offenders = {p.relative_to(PACKAGE).as_posix(): sorted(m for m in _imports(p) if m.startswith("aml_pipeline.spark"))
                 for p in paths}
    assert not {k: v for k, v in offenders.items() if v}


def test_engine_spark_refuses_an_export_runtime_before_loading_the_bundle(compose_cfg, tmp_path):
    from aml_pipeline.tasks import score

    missing = tmp_path / "no-bundle-here"
    cfg = compose_cfg(["task=score", "engine=spark", "deploy.model_runtime=onnx", f"bundle={missing}"])
    with pytest.raises(ConfigError, match=r"deploy\.model_runtime=onnx: engine=spark scores with the native model only"):
        score.run(cfg)
