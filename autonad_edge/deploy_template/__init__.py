"""Files copied verbatim into a deployment bundle (`autonad_edge.export.bundle`): ``infer.py``
(a stand-alone inference example) and ``README.md``. Not imported by the package."""
