"""Hardware-in-the-loop latency on the host: agent clients, the pool, the table, targets.

Imports neither torch nor any inference runtime: measuring happens on the agents (the
`local` target runs one in this process, whose worker imports ONNX Runtime separately).

    from autonad_edge.latency import open_target, LatencyTable
    with LatencyTable("runs/latency.sqlite") as table, open_target("local", table=table) as pool:
        m = pool.measure(onnx_bytes)
        print(m.median_ms, m.fingerprint.hash)
"""

from autonad_agent.backends.base import TensorSpec
from autonad_agent.measure import MeasurementPolicy
from autonad_edge.latency.client import (
    AgentClient,
    AgentError,
    AgentUnreachable,
    BackendInfo,
    DeviceInfo,
    Engine,
    Measurement,
)
from autonad_edge.latency.fingerprint import Fingerprint, fingerprint_hash, host_fingerprint
from autonad_edge.latency.pool import ClientPool, MeasureJob, PoolExhausted, model_signature, onnx_sha256
from autonad_edge.latency.table import (
    LatencyTable,
    LatencyTableError,
    MissingEntriesError,
    StaleTableError,
    StoredFingerprint,
    TableEntry,
)
from autonad_edge.latency.targets import (
    LOCAL_TARGET,
    Target,
    TargetConfig,
    TargetError,
    find_targets_file,
    get_target,
    load_targets,
    open_target,
)

__all__ = [
    "AgentClient", "AgentError", "AgentUnreachable", "BackendInfo", "ClientPool", "DeviceInfo", "Engine",
    "Fingerprint", "LOCAL_TARGET", "LatencyTable", "LatencyTableError", "MeasureJob", "Measurement",
    "MeasurementPolicy", "MissingEntriesError", "PoolExhausted", "StaleTableError", "StoredFingerprint",
    "TableEntry", "Target", "TargetConfig", "TargetError", "TensorSpec", "find_targets_file",
    "fingerprint_hash", "get_target", "host_fingerprint", "load_targets", "model_signature", "onnx_sha256",
    "open_target",
]
