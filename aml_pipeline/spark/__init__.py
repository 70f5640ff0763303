"""The Spark engine: the same validation rules and feature plan, compiled to Spark DataFrames.

Nothing here defines a rule or a feature. :mod:`aml_pipeline.validation.rules` (the rule
list) and :class:`aml_pipeline.features.plan.FeaturePlan` (steps, parameters, fitted state)
stay the single definitions; this package compiles them:

- :mod:`.session`: the one place a SparkSession is built from ``cfg.engine``;
- :mod:`.validation`: rules → Spark column predicates, valid/quarantine split with reasons;
- :mod:`.windows`: the as-of primitives (exact fixed-point window sums, interval counts,
  previous time) on event-time range windows;
- :mod:`.features`: each feature step kind → a Spark compilation (registry), fit and
  transform driven by the FeaturePlan;
- :mod:`.split`, :mod:`.io`, :mod:`.data`: the temporal split, parquet in and out, and the
  ``task=data`` / ``task=features`` entry points used when ``engine=spark``.

Importing this package does not import pyspark; the submodules do.
"""
