"""Spark's ``foreachBatch`` contract around the streaming scorer, without Spark: the process
the fault-injection test kills (``python -m tests.stream_driver SPEC.json`` by hand; the test
starts :func:`main` through a multiprocessing fork server that imported this module once, so
a restart costs the scorer's own start, not Python's imports).

Spark plans micro-batch ``N`` (its offsets go to its log first), calls
``foreachBatch(df, N)`` and records ``N`` as done only when that returns; after a crash it
calls ``foreachBatch`` again with the same records for ``N``. This driver does the same over
a fixed list of micro-batches: ``commits.json`` plays Spark's commit log. Everything else is
the scorer as ``task=stream`` builds it (:func:`aml_pipeline.streaming.job.build_scorer`: the
checkpoint's fingerprint, the store, the state log, the outputs), so a SIGKILL at any moment
leaves what a killed scorer leaves, at many more points per second than a Spark run allows.

SPEC: ``{"overrides": [...], "batches": path (a JSON list of micro-batches, each a list of
[text, position]), "commits": path, "summary": path}``; at the end the held events are
released and the scorer's summary is written to ``summary``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from aml_pipeline import CONF_DIR
from aml_pipeline.config import register_configs
from aml_pipeline.jsonl import replace_durably
from aml_pipeline.streaming.job import build_scorer
from aml_pipeline.streaming.records import RawRecord


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=spec["overrides"])
    scorer, store, _, _ = build_scorer(cfg)
    batches = json.loads(Path(spec["batches"]).read_text())
    commits = Path(spec["commits"])
    done = json.loads(commits.read_text())["batch_id"] if commits.is_file() else -1
    for n in range(done + 1, len(batches)):
        scorer.process(n, [RawRecord(text, position) for text, position in batches[n]])
        replace_durably(commits, json.dumps({"batch_id": n}))
    scorer.flush()
    scorer.outputs.close()
    store.close()
    replace_durably(Path(spec["summary"]), json.dumps(scorer.summary(), default=str))


if __name__ == "__main__":
    main(sys.argv[1])
