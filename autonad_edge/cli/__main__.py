"""`python -m autonad_edge.cli` (e.g. under torchrun without --no-python)."""

from autonad_edge.cli import main

main()
