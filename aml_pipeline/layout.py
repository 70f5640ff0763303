"""Where each stage reads and writes: the named data layers, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from aml_pipeline.errors import UserError


@dataclass(frozen=True)
class Layout:
    data_dir: Path
    reports_dir: Path
    models_dir: Path

    @classmethod
    def of(cls, cfg: DictConfig) -> "Layout":
        return cls(Path(cfg.paths.data_dir), Path(cfg.paths.reports_dir), Path(cfg.paths.models_dir))

    @property
    def validated(self) -> Path:
        return self.data_dir / "validated" / "transactions.parquet"

    @property
    def features(self) -> Path:
        return self.data_dir / "features" / "features.parquet"

    @property
    def plan(self) -> Path:
        return self.data_dir / "features" / "plan.json"

    @property
    def split(self) -> Path:
        return self.data_dir / "features" / "split.json"

    @property
    def bundle(self) -> Path:
        return self.models_dir / "bundle"

    @property
    def registration(self) -> Path:
        return self.models_dir / "registered.json"

    @property
    def metrics(self) -> Path:
        return self.reports_dir / "metrics.json"


def need(path: Path, stage: str) -> Path:
    """A previous stage's output, or one line saying which task makes it."""
    if not path.exists():
        raise UserError(f"{path} is missing: run task={stage} first (or task=all)")
    return path
