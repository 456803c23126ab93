"""The SQLite latency table: persistence across processes, and no silent use of entries
measured on another device."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autonad_edge.latency import (
    Fingerprint,
    LatencyTable,
    Measurement,
    MeasurementPolicy,
    MissingEntriesError,
    StaleTableError,
    TensorSpec,
)

CPU_A = Fingerprint({"cpu_model": "Cortex-A78AE", "runtime": "onnxruntime", "runtime_version": "1.32.0", "threads": "4"})
CPU_B = Fingerprint({**CPU_A.fields, "runtime_version": "1.33.0"})


def measurement(fingerprint: Fingerprint, median_ms: float = 1.0) -> Measurement:
    return Measurement(
        median_ms=median_ms, mean_ms=median_ms * 1.1, min_ms=median_ms * 0.9, max_ms=median_ms * 2,
        p90_ms=median_ms * 1.2, p99_ms=median_ms * 1.5, std_ms=0.1, cv=0.09, runs=50, outliers=1,
        stable=True, attempts=1, warmup_runs=10, cached=False, backend="onnxruntime", precision="fp32",
        inputs=(TensorSpec("x", (1, 3, 32, 32)),), policy=MeasurementPolicy(), model_sha256="ab" * 32,
        fingerprint=fingerprint, agent="127.0.0.1:1",
    )


def test_fingerprint_hash_is_stable_and_order_independent():
    reordered = Fingerprint(dict(reversed(list(CPU_A.fields.items()))))
    assert reordered.hash == CPU_A.hash and len(CPU_A.hash) == 16
    assert CPU_B.hash != CPU_A.hash
    assert CPU_A.differences(CPU_B) == {"runtime_version": ("1.32.0", "1.33.0")}
    assert Fingerprint.from_json(CPU_A.to_json()) == CPU_A


def test_lookup_never_uses_another_fingerprint(tmp_path: Path):
    with LatencyTable(tmp_path / "t.sqlite") as table:
        table.record("block-1", measurement(CPU_A, 1.5))
        assert table.get(CPU_A, "onnxruntime", "fp32", "block-1").median_ms == 1.5
        assert table.get(CPU_B, "onnxruntime", "fp32", "block-1") is None
        assert table.get(CPU_A, "onnxruntime", "fp16", "block-1") is None
        with pytest.raises(StaleTableError) as excinfo:
            table.require(CPU_B, "onnxruntime", "fp32", ["block-1"])
        message = str(excinfo.value)
        assert CPU_A.hash in message and "runtime_version" in message and "1.32.0" in message
        with pytest.raises(MissingEntriesError):
            table.require(CPU_A, "onnxruntime", "fp32", ["block-1", "block-2"])
        assert set(table.require(CPU_A, "onnxruntime", "fp32", ["block-1"])) == {"block-1"}
        [stored] = table.fingerprints()
        assert stored.fingerprint == CPU_A and stored.entries == 1


def test_rerecording_replaces_the_row(tmp_path: Path):
    with LatencyTable(tmp_path / "t.sqlite") as table:
        table.record("block-1", measurement(CPU_A, 1.0))
        table.record("block-1", measurement(CPU_A, 2.0))
        [entry] = table.entries()
        assert entry.median_ms == 2.0 and entry.n == 50 and entry.variance_ms2 == pytest.approx(0.01)


def test_failed_batch_leaves_nothing_behind(tmp_path: Path):
    with LatencyTable(tmp_path / "t.sqlite") as table:
        broken = measurement(CPU_A)
        object.__setattr__(broken, "median_ms", None)  # violates NOT NULL mid-transaction
        with pytest.raises(Exception):
            table.record_many([("ok", measurement(CPU_A)), ("broken", broken)])
        assert table.entries() == []


def test_a_full_disk_names_itself_and_the_table_stays_usable(tmp_path: Path):
    import sqlite3

    with LatencyTable(tmp_path / "t.sqlite") as table:
        (pages,) = table._db.execute("PRAGMA page_count").fetchone()
        table._db.execute(f"PRAGMA max_page_count={pages}")  # the file may not grow: a full disk
        with pytest.raises(sqlite3.OperationalError, match="full"):
            table.record_many([(f"block-{'x' * 2000}-{i}", measurement(CPU_A)) for i in range(50)])
        assert table.entries() == []
        table._db.execute("PRAGMA max_page_count=1000000")  # space again: the next write works
        table.record("block-1", measurement(CPU_A))
        assert [e.signature for e in table.entries()] == ["block-1"]


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_latency_table import CPU_A, CPU_B, measurement
    from autonad_edge.latency import LatencyTable
    with LatencyTable({path!r}) as table:
        for i in range(40):
            table.record(f"{{sys.argv[1]}}-{{i}}", measurement(CPU_A if sys.argv[1] == "a" else CPU_B, 1.0 + i))
    """
)
_READER = textwrap.dedent(
    """
    import json, sys
    from autonad_edge.latency import LatencyTable
    with LatencyTable({path!r}) as table:
        print(json.dumps({{"rows": len(table.entries()), "fingerprints": [s.fingerprint.hash for s in table.fingerprints()],
                          "a7": table.entries()[0].median_ms}}))
    """
)


def test_table_is_shared_across_processes(tmp_path: Path):
    path = str(tmp_path / "shared.sqlite")
    tests = str(Path(__file__).parent)
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER.format(tests=tests, path=path), name])
        for name in ("a", "b")
    ]
    try:
        assert [w.wait(timeout=60) for w in writers] == [0, 0]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    result = subprocess.run(
        [sys.executable, "-c", _READER.format(path=path)], capture_output=True, text=True, timeout=60, check=True
    )
    summary = json.loads(result.stdout)
    assert summary["rows"] == 80
    assert sorted(summary["fingerprints"]) == sorted([CPU_A.hash, CPU_B.hash])
    with LatencyTable(path) as table:
        assert len(table.entries(fingerprint=CPU_A)) == 40
        assert table.get(CPU_B, "onnxruntime", "fp32", "a-0") is None
