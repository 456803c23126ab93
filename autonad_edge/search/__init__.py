"""`autonad-edge search`: the pipeline (`pipeline`), its stages (`stages`, one module each),
its configuration (`config`, `presets`) and planning (`planning`, `budget`), and the
latency-aware evolutionary search (`evolution`)."""
