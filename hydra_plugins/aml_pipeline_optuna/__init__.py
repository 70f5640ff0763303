"""A Hydra sweeper that searches with Optuna: ``override /hydra/sweeper: aml_optuna``.

Hydra finds plugins in the ``hydra_plugins`` namespace package; importing this package
registers the sweeper's config and costs nothing else (Optuna is imported when a sweep
starts). See :mod:`.optuna_sweeper`.
"""

from hydra_plugins.aml_pipeline_optuna.optuna_sweeper import OptunaSweeper, OptunaSweeperConf, register

register()

__all__ = ["OptunaSweeper", "OptunaSweeperConf"]
