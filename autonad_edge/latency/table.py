"""`LatencyTable`: measured latencies on SQLite, shared across runs and processes.

One row per (fingerprint hash, backend, precision, signature); re-measuring replaces the
row. Fingerprints are stored in full next to the rows, so a lookup can explain *why*
nothing matched. Lookups always take the current fingerprint and never fall back to
another device's numbers: a table measured on a different device, runtime or power mode
raises `StaleTableError` (from `require`) listing what the table does hold.

WAL mode lets readers and one writer work concurrently from several processes; every
write is one transaction, so a crash leaves the table as it was before or after it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from autonad_agent.measure import LatencyStats
from autonad_edge.errors import AutonadError
from autonad_edge.latency.fingerprint import Fingerprint

if TYPE_CHECKING:
    from autonad_edge.latency.client import Measurement

SCHEMA_VERSION = 1
_SQL_BATCH = 500  # bound on host parameters per statement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fingerprints (
    hash TEXT PRIMARY KEY,
    fields_json TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    fingerprint_hash TEXT NOT NULL REFERENCES fingerprints(hash),
    backend TEXT NOT NULL,
    precision TEXT NOT NULL,
    signature TEXT NOT NULL,
    n INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    mean_ms REAL NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    std_ms REAL NOT NULL,
    variance_ms2 REAL NOT NULL,
    cv REAL NOT NULL,
    outliers INTEGER NOT NULL,
    stable INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint_hash, backend, precision, signature)
);
"""

_ENTRY_COLUMNS = (
    "fingerprint_hash, backend, precision, signature, n, median_ms, mean_ms, min_ms, max_ms, "
    "p90_ms, p99_ms, std_ms, variance_ms2, cv, outliers, stable, model_sha256, created_at"
)
_COLUMN_NAMES = tuple(name.strip() for name in _ENTRY_COLUMNS.split(","))


class LatencyTableError(AutonadError, LookupError):
    """The table cannot answer a lookup."""


class StaleTableError(LatencyTableError):
    """The table has the requested entries only for other fingerprints (another device,
    runtime version, power mode, ...): those numbers must not be used here."""


class MissingEntriesError(LatencyTableError):
    """Some requested entries were never measured (for any fingerprint)."""

    def __init__(self, missing: list[str]) -> None:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        super().__init__(f"{len(missing)} signature(s) not measured yet: {shown}")
        self.missing = missing


@dataclass(frozen=True)
class TableEntry(LatencyStats):
    """One stored measurement: the agent's statistics under the table's key."""

    fingerprint_hash: str
    backend: str
    precision: str
    signature: str
    stable: bool
    model_sha256: str
    created_at: float

    @property
    def n(self) -> int:
        """Timed runs (the table's column name for `runs`)."""
        return self.runs

    @classmethod
    def from_row(cls, row: tuple) -> TableEntry:
        values = dict(zip(_COLUMN_NAMES, row))
        values["runs"] = values.pop("n")
        del values["variance_ms2"]  # a column for SQL queries; the record derives it from std_ms
        values["stable"] = bool(values["stable"])
        return cls(**values)


@dataclass(frozen=True)
class StoredFingerprint:
    fingerprint: Fingerprint
    first_seen: float
    entries: int


class LatencyTable:
    """A latency table in the SQLite file at `path` (created if missing). Thread-safe."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) below.
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock:
            self._enable_wal(busy_timeout_s)
            self._db.execute("PRAGMA synchronous=FULL")  # a measurement costs seconds; keep it
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                (version,) = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if int(version) != SCHEMA_VERSION:
                raise LatencyTableError(f"{self.path} has schema version {version}, this code reads {SCHEMA_VERSION}")

    def _enable_wal(self, timeout_s: float) -> None:
        """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler,
        when another process is switching the same new file at that moment: retry until the
        busy timeout (two runs opening a fresh shared table together hit this)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception, the COMMIT's own included
        (caller holds _lock). SQLite may already have rolled back by itself (a full disk, an I/O
        error): then a ROLLBACK would fail and hide the real error, so it runs only inside a
        transaction; and one left open would make every later BEGIN on this connection fail."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ writing

    def record(self, signature: str, measurement: Measurement) -> None:
        """Store one complete measurement (replacing an older one with the same key)."""
        self.record_many([(signature, measurement)])

    def record_many(self, items: Iterable[tuple[str, Measurement]]) -> None:
        """Store several measurements in one transaction: all or none."""
        now = time.time()
        with self._lock, self._transaction():
            for signature, m in items:
                self._db.execute(
                    "INSERT OR IGNORE INTO fingerprints(hash, fields_json, first_seen) VALUES (?, ?, ?)",
                    (m.fingerprint.hash, m.fingerprint.to_json(), now),
                )
                self._db.execute(
                    f"INSERT OR REPLACE INTO measurements({_ENTRY_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.fingerprint.hash, m.backend, m.precision, signature, m.runs, m.median_ms, m.mean_ms,
                        m.min_ms, m.max_ms, m.p90_ms, m.p99_ms, m.std_ms, m.variance_ms2, m.cv, m.outliers,
                        int(m.stable), m.model_sha256, now,
                    ),
                )

    # ------------------------------------------------------------------ reading

    def get(self, fingerprint: Fingerprint, backend: str, precision: str, signature: str) -> TableEntry | None:
        """The entry measured under exactly `fingerprint`, or None. Never another device's."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM measurements "
                "WHERE fingerprint_hash = ? AND backend = ? AND precision = ? AND signature = ?",
                (fingerprint.hash, backend, precision, signature),
            ).fetchone()
        return TableEntry.from_row(row) if row else None

    def require(
        self, fingerprint: Fingerprint, backend: str, precision: str, signatures: Iterable[str]
    ) -> dict[str, TableEntry]:
        """Entries for all `signatures` under `fingerprint`. Raises StaleTableError if some are
        missing but were measured under other fingerprints, MissingEntriesError otherwise."""
        wanted = list(dict.fromkeys(signatures))
        found = {}
        for signature in wanted:
            entry = self.get(fingerprint, backend, precision, signature)
            if entry is not None:
                found[signature] = entry
        missing = [s for s in wanted if s not in found]
        if not missing:
            return found
        others: set[str] = set()
        with self._lock:
            for start in range(0, len(missing), _SQL_BATCH):
                batch = missing[start : start + _SQL_BATCH]
                others.update(
                    h for (h,) in self._db.execute(
                        "SELECT DISTINCT fingerprint_hash FROM measurements WHERE backend = ? AND precision = ? "
                        f"AND fingerprint_hash != ? AND signature IN ({', '.join('?' * len(batch))})",
                        (backend, precision, fingerprint.hash, *batch),
                    )
                )
        if others:
            raise StaleTableError(self._stale_message(fingerprint, backend, precision, len(missing), others))
        raise MissingEntriesError(missing)

    def _stale_message(self, current: Fingerprint, backend: str, precision: str, missing: int, others: set[str]) -> str:
        stored = {s.fingerprint.hash: s for s in self.fingerprints()}
        lines = [
            f"{self.path}: {missing} {backend}/{precision} entries exist only for other device fingerprints; "
            f"the current one is {current.summary()}. Stored fingerprints:"
        ]
        for other in sorted(others):
            if other not in stored:
                continue
            diff = current.differences(stored[other].fingerprint)
            changed = ", ".join(f"{k}: {theirs!r} -> {ours!r}" for k, (ours, theirs) in diff.items())
            lines.append(f"  {stored[other].fingerprint.summary()} ({stored[other].entries} entries; differs in {changed})")
        lines.append("Re-measure on this device (the old entries stay, keyed by their fingerprint).")
        return "\n".join(lines)

    def entries(
        self, fingerprint: Fingerprint | None = None, backend: str | None = None, precision: str | None = None
    ) -> list[TableEntry]:
        """All entries, optionally filtered, in signature order."""
        clauses, params = [], []
        for column, value in (("fingerprint_hash", fingerprint.hash if fingerprint else None),
                              ("backend", backend), ("precision", precision)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM measurements {where} ORDER BY signature, fingerprint_hash", params
            ).fetchall()
        return [TableEntry.from_row(row) for row in rows]

    def fingerprints(self) -> list[StoredFingerprint]:
        """Every fingerprint the table holds entries for, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.fields_json, f.first_seen, COUNT(m.signature) FROM fingerprints f "
                "LEFT JOIN measurements m ON m.fingerprint_hash = f.hash GROUP BY f.hash ORDER BY f.first_seen"
            ).fetchall()
        return [StoredFingerprint(Fingerprint.from_json(text), first_seen, count) for text, first_seen, count in rows]

