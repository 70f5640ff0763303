"""Every option of every config group composes; wrong keys and values fail before any work."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from aml_pipeline.build import build
from aml_pipeline.errors import ConfigError
from aml_pipeline.sources.base import Source
from tests.conftest import CONF, ROOT


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("option", options("source"))
def test_every_source_option_composes_and_builds(compose_cfg, option):
    cfg = compose_cfg([f"source={option}", "source.path=somewhere.csv"] if option != "synthetic" else [])
    assert cfg.source._target_.startswith("aml_pipeline.sources.")
    assert OmegaConf.select(cfg, "source.jurisdiction") is not None
    src = build(cfg.source, "source")  # constructors store parameters only: no I/O
    assert isinstance(src, Source)


def test_synthetic_seed_follows_global_seed(compose_cfg):
    assert compose_cfg(["seed=7"]).source.seed == 7


def test_misspelt_key_is_named(compose_cfg):
    with pytest.raises(ConfigCompositionException) as exc:
        compose_cfg(["source=paysim", "source.pth=x.csv"])
    assert "source.pth" in str(exc.value.__cause__ or exc.value)


def test_wrong_enum_value_lists_allowed_values(compose_cfg):
    with pytest.raises(ConfigCompositionException) as exc:
        compose_cfg(["source=amlsim", "source.path=d", "source.label_rule=all"])
    text = str(exc.value.__cause__ or exc.value)
    assert "label_rule" in text and "both" in text and "either" in text


def test_removed_spark_pass_evaluator_is_refused_by_name(compose_cfg):
    """engine.passes (the compiled arrow/window evaluators) is gone: an old override fails naming the key."""
    assert compose_cfg(["engine=spark"]).engine.account_partitions is None
    with pytest.raises(ConfigCompositionException) as exc:
        compose_cfg(["engine=spark", "engine.passes=arrow"])
    text = str(exc.value.__cause__ or exc.value)
    assert "passes" in text and "EngineConfig" in text


def test_wrong_task_lists_allowed_values(compose_cfg):
    with pytest.raises(ConfigCompositionException) as exc:
        compose_cfg(["task=dat"])
    assert "data" in str(exc.value.__cause__ or exc.value)


def test_unknown_source_option_lists_options(compose_cfg):
    with pytest.raises(ConfigCompositionException) as exc:
        compose_cfg(["source=nosuch"])
    assert "paysim" in str(exc.value)


def test_foreign_target_refused(compose_cfg):
    cfg = compose_cfg([])
    cfg.source._target_ = "os.system"
    with pytest.raises(ConfigError, match="outside aml_pipeline"):
        build(cfg.source, "source")


def test_docs_list_every_schema_field_and_reason():
    """docs/data.md carries the generated tables, so the docs cannot drift from the code."""
    from aml_pipeline.schema import schema_markdown
    from aml_pipeline.validation.rules import build_rules, rules_markdown

    doc = (ROOT / "docs" / "data.md").read_text()
    assert schema_markdown() in doc
    assert rules_markdown(build_rules(["USD"], True)) in doc


@pytest.mark.parametrize("option", options("model"))
def test_every_model_option_builds(compose_cfg, option):
    from aml_pipeline.models.classifiers import Classifier

    cfg = compose_cfg([f"model={option}", "seed=3"])
    model = build(cfg.model, "model")
    assert isinstance(model, Classifier) and model.name == option


@pytest.mark.parametrize("option", options("weighting"))
def test_every_weighting_option_builds(compose_cfg, option):
    import numpy as np

    weighting = build(compose_cfg([f"weighting={option}"]).weighting, "weighting")
    w = weighting.weights(np.array([0, 0, 0, 1]))
    assert w is None or (len(w) == 4 and w[3] >= w[0])


@pytest.mark.parametrize("option", options("features"))
def test_every_feature_plan_builds(compose_cfg, option):
    from aml_pipeline.features.plan import FeaturePlan

    plan = FeaturePlan.from_config(compose_cfg([f"features={option}"]).features.steps)
    assert plan.feature_columns() and len(set(plan.feature_columns())) == len(plan.feature_columns())


@pytest.mark.parametrize("group", ["split", "thresholds", "mlflow", "paths", "validation"])
def test_every_option_of_other_groups_composes(compose_cfg, group):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"])
        assert OmegaConf.select(cfg, group) is not None


def test_thresholds_config_parses(compose_cfg):
    from aml_pipeline.evaluation.thresholds import parse_thresholds_config

    default, per_jurisdiction, min_pos = parse_thresholds_config(compose_cfg([]).thresholds)
    assert "US" in per_jurisdiction and min_pos >= 1


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(compose_cfg, experiment):
    cfg = compose_cfg([f"+experiment={experiment}"])
    assert cfg.name == experiment


def test_hparams_search_composes(compose_cfg):
    for option in options("hparams_search"):
        cfg = compose_cfg([f"+hparams_search={option}"])
        assert cfg.model._target_.endswith("LightGBMClassifier")


def test_unknown_feature_step_parameter_names_key_and_allowed(compose_cfg):
    from aml_pipeline.features.plan import FeaturePlan

    cfg = compose_cfg(["+features.steps.rolling.windws=[1h]"])
    with pytest.raises(ConfigError, match=r"features\.steps\.rolling\.windws.*allowed: windows"):
        FeaturePlan.from_config(cfg.features.steps)


def test_unknown_model_param_names_key(compose_cfg):
    cfg = compose_cfg(["+model.params.num_leafs=7"])
    with pytest.raises(ConfigError, match=r"model\.params\.num_leafs"):
        build(cfg.model, "model")
