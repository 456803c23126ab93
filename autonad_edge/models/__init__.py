"""Model code (needs torch): the spatial-shift operator, elastic layers, the hybrid supernet,
the MFAM decoder and the static networks that `HybridSupernet.extract` returns."""
