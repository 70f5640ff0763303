"""Source adapters: each maps one real format onto the canonical transaction schema."""

# The realistic world registers itself with the simulator (synthetic.SIMULATE).
from aml_pipeline.sources import realistic  # noqa: E402,F401
