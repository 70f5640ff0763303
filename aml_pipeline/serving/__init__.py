"""The online scoring service: FastAPI routes (:mod:`.app`) over a :class:`.scorer.Scorer`,
started by ``task=serve`` (:mod:`.server`); decisions are logged and can be re-scored
(:mod:`.replay`). See docs/serving.md."""
