"""Latency-aware evolutionary search and the end-to-end `autonad-edge search` pipeline."""
