"""A made-up feature kind for the tests of how engines take or refuse a kind they are not told
of (tests/test_feature_conformance.py, tests/test_spark_parity.py): ``amount_x2`` = 2 x amount."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import polars as pl

from aml_pipeline.features.base import STEPS, FeatureStep


@dataclass
class Doubler(FeatureStep):
    """Stateless; declares only polars, with an ``online`` form present but undeclared."""

    kind = "doubler_for_test"
    engines = ("polars",)

    def required_columns(self):
        return ["amount"]

    def output_columns(self):
        return {"amount_x2": pl.Float64}

    def transform(self, frame):
        return frame.with_columns((pl.col("amount") * 2).alias("amount_x2"))

    def online(self, col):  # present, but a kind that does not declare "online" is still refused
        return lambda ev, h, out: out.update(amount_x2=ev.amount * 2)


@contextmanager
def registered(*kinds: type[FeatureStep]):
    """The kinds registered under their ``kind`` for the block, then removed."""
    for k in kinds:
        STEPS[k.kind] = k
    try:
        yield
    finally:
        for k in kinds:
            del STEPS[k.kind]
