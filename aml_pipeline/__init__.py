"""aml_pipeline: config-driven anti-money-laundering transaction monitoring."""

__version__ = "0.1.0"
