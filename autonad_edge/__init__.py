"""autonad-edge: AutoNAD hardware-in-the-loop architecture search for defect segmentation.

The top level imports nothing heavy: `autonad_edge.space` is pure Python, the model code under
`autonad_edge.models` needs torch (the `host` extra).
"""

__version__ = "0.1.0"
