"""aml_pipeline: config-driven anti-money-laundering transaction monitoring."""

from pathlib import Path

__version__ = "0.1.0"

#: The shipped configs (package data), by absolute path: Hydra resolves a relative config
#: path against the calling module, which differs between ``python -m aml_pipeline`` and the
#: console command. In a clone, ``conf/`` at the root is a link to this folder.
CONF_DIR = Path(__file__).resolve().parent / "conf"
