"""Row-level validation with quarantine: one rule list, compiled per engine."""

from aml_pipeline.validation.rules import Rule, build_rules
from aml_pipeline.validation.polars_engine import ValidationResult, validate

__all__ = ["Rule", "build_rules", "ValidationResult", "validate"]
