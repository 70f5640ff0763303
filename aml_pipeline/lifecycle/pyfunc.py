"""Where the registered model's MLflow wrapper lived before it moved to :mod:`aml_pipeline.pyfunc`.

MLflow pickles a registered pyfunc's Python model by reference to its class, so versions
registered before the move name ``aml_pipeline.lifecycle.pyfunc.TransactionScorer``. This
module keeps that name importable, so those versions still load (``models:/...`` in
``mlflow.pyfunc.load_model``, ``mlflow models serve``); new registrations name
:mod:`aml_pipeline.pyfunc`.
"""

from aml_pipeline.pyfunc import TransactionScorer

__all__ = ["TransactionScorer"]
