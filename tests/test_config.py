"""Every option of every config group composes; wrong keys and values fail before any work."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from aml_pipeline.build import build
from aml_pipeline.errors import ConfigError
from aml_pipeline.sources.base import Source
from tests.conftest import CONF


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

    doc = (CONF.parent / "docs" / "data.md").read_text()
    assert schema_markdown() in doc
    assert rules_markdown(build_rules(["USD"], True)) in doc
