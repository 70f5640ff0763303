"""Registers aml_pipeline's typed config schemas when DVC composes ``conf/``.

``dvc exp run`` (with ``[hydra] enabled = true`` in ``.dvc/config``) composes ``conf/``
into params.yaml inside the ``dvc`` process itself, where nothing has imported
aml_pipeline, so the structured schemas every group option extends (``base_config``,
``mlflow/base_mlflow``, ...) are not in Hydra's ConfigStore and composition fails with
``Could not load 'mlflow/base_mlflow'``. Before composing, DVC puts ``plugins_path`` (set
to ``.dvc/plugins`` in ``.dvc/config``) on ``sys.path`` and lets Hydra scan the
``hydra_plugins`` namespace, which imports this module: registering the schemas here
makes DVC's composition identical to ``python -m aml_pipeline.compose``.

The package is imported from this repository (not another installed copy), so the
schemas always match the conf/ being composed.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[3])
sys.path.insert(0, _ROOT)
try:
    from aml_pipeline.config import register_configs
finally:
    sys.path.remove(_ROOT)

register_configs()
