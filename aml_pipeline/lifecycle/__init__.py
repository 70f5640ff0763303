"""A model's life after evaluation: promotion through a gate (``task=promote``)."""
