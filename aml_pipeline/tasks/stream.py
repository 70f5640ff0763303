"""``task=stream``: the streaming scorer (Spark Structured Streaming) over the online store.

``python -m aml_pipeline task=stream deploy=file bundle=models:/aml-scorer@challenger``
(or ``deploy=kafka``; ``@champion`` once ``task=promote`` has set it); everything else is
under ``deploy.*`` (conf/deploy/file.yaml, conf/deploy/kafka.yaml). See docs/streaming.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

# Spark and the streaming package load only for this task: its module loads after the
# stream extra was checked (tasks.TASK_EXTRAS).
from aml_pipeline.streaming import job, spark_state


def run(cfg: DictConfig) -> dict:
    if job.uses_spark_state(cfg):
        job.refuse_store_only_options(cfg)
        return spark_state.run(cfg)
    return job.run(cfg)
