"""``task=data``: read the configured source, validate every row, write the data layers.

load (adapter) → validate (rules) → save: ``data/validated/transactions.parquet`` (valid
rows, canonical schema, checked by pandera), ``data/quarantine/quarantine.parquet`` (failing
rows with reasons and original text) and ``data/validated/summary.json`` (counts that
reconcile: rows read = valid + quarantined). The configured engine does the work
(:mod:`aml_pipeline.engines`); both write the same files.
"""

from __future__ import annotations

from omegaconf import DictConfig

from aml_pipeline.engines import engine_of


def run(cfg: DictConfig) -> dict:
    return engine_of(cfg).data(cfg)
