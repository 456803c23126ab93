"""autonad-agent: the latency agent that runs on a target device.

Installs and runs without torch: nothing under this package may import it.
"""

__version__ = "0.1.0"
