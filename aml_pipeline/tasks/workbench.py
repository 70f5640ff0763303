"""``task=workbench``: the investigators' web pages over the case database.

``python -m aml_pipeline task=workbench`` serves the queue, the case pages and the
dispositions on ``workbench.host:workbench.port`` (conf/workbench/default.yaml); users log in
with the accounts ``task=users`` created. See docs/workbench.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

from aml_pipeline.workbench.server import serve


def run(cfg: DictConfig) -> dict:
    return serve(cfg)
