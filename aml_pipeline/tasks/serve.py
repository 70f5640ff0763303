"""``task=serve``: the online scoring service (FastAPI on uvicorn) over the online store.

``python -m aml_pipeline task=serve deploy=service bundle=models:/aml-scorer@challenger``;
everything else is under ``deploy.*`` (conf/deploy/service.yaml). See docs/serving.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

from aml_pipeline.serving.server import serve


def run(cfg: DictConfig) -> dict:
    return serve(cfg)
