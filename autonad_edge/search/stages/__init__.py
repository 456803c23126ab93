"""The stages of `autonad-edge search`, one module each: a function of the run's context (and
the earlier stages' results) that returns a frozen result dataclass, saved in ``stages.json``."""
