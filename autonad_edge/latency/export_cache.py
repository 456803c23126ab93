"""A persistent, content-addressed cache of exported units' ONNX bytes.

Exporting a unit costs about a second of CPU (torch.export + the ONNX translation) and gives
the same bytes every time (weights seeded by the unit's signature), so a rerun, a second
target or another tool (profile, estimator, background profiler, benchmarks) never needs to
export a unit twice::

    cache = ExportCache.default()            # $AUTONAD_EXPORT_CACHE or ~/.cache/autonad-edge/exports
    data = cache.get(key)                    # bytes or None (a corrupt entry is deleted: a miss)
    cache.put(key, data)                     # atomic; evicts least recently used past max_bytes

The key (`export_key`) covers everything the bytes depend on: the unit's signature, the
flavour, the versions of torch, onnx and onnxscript, and a digest of this package's model and
export sources, so an upgrade or a code change misses instead of serving a stale graph. Each
entry stores its payload's SHA-256 and is checked on every read.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from autonad_edge.io import atomic_write_bytes

log = logging.getLogger(__name__)

ENV_VAR = "AUTONAD_EXPORT_CACHE"  # a directory, or "off"
DEFAULT_MAX_BYTES = 2 * 1024**3
# A temp file older than this is a killed writer's (a write takes milliseconds): eviction removes it.
STALE_TEMP_S = 3600
# Puts between recounts of the directory's size (other processes write to it too).
RECOUNT_EVERY = 16
_MAGIC = b"autonad-export-v1\n"
_DIGEST_LEN = 64  # hex SHA-256
_SUFFIX = ".onnxc"


def default_dir() -> Path | None:
    """$AUTONAD_EXPORT_CACHE ("off": no cache), else $XDG_CACHE_HOME or ~/.cache, /autonad-edge/exports."""
    value = os.environ.get(ENV_VAR)
    if value:
        return None if value.lower() == "off" else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autonad-edge" / "exports"


@functools.lru_cache(maxsize=1)
def exporter_fingerprint() -> str:
    """What exported bytes depend on besides the unit: library versions, this package's model,
    export and unit-building sources, and the TensorRT plugin's identity (its name, version and
    namespace are written into every spatial-shift node of a tensorrt-flavour export)."""
    import onnx
    import torch

    from autonad_agent.plugin_identity import SPATIAL_SHIFT_PLUGIN

    try:
        import onnxscript

        onnxscript_version = onnxscript.__version__
    except ImportError:  # pragma: no cover - a dependency of torch's exporter
        onnxscript_version = "none"
    digest = hashlib.sha256(f"torch={torch.__version__};onnx={onnx.__version__};"
                            f"onnxscript={onnxscript_version};plugin={SPATIAL_SHIFT_PLUGIN.op}"
                            f"/{SPATIAL_SHIFT_PLUGIN.version}".encode())
    package = Path(__file__).resolve().parents[1]
    sources = sorted([*(package / "models").glob("*.py"), *(package / "export").glob("*.py"),
                      package / "latency" / "blocks.py", package / "space.py"])
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def export_key(signature: str, flavor: str) -> str:
    """The cache key of a unit's export (hex SHA-256)."""
    text = f"{exporter_fingerprint()}|{flavor}|{signature}"
    return hashlib.sha256(text.encode()).hexdigest()


class ExportCache:
    """Exported ONNX bytes on disk, by key, bounded by `max_bytes` with LRU eviction (a hit
    touches the entry's mtime). Safe for several processes: entries are written atomically
    and verified on read."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes on disk, counted on first put and every RECOUNT_EVERY puts
        self._puts = 0
        self.hits = self.misses = self.corrupt = 0

    @classmethod
    def default(cls) -> "ExportCache | None":
        root = default_dir()
        return None if root is None else cls(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        data = _unpack(blob)
        if data is None:
            log.warning("export cache: %s is corrupt; removed, the unit will be exported again", path)
            self.corrupt += 1
            self.misses += 1
            with self._lock:
                self._forget(path, len(blob))
            return None
        self.hits += 1
        try:
            os.utime(path)
        except OSError:
            pass
        return data

    def put(self, key: str, data: bytes) -> None:
        blob = _pack(data)
        if len(blob) > self.max_bytes:
            return
        path = self.path(key)
        try:
            atomic_write_bytes(path, blob)
        except OSError as exc:  # a full or read-only disk costs speed, not correctness
            log.warning("export cache: cannot write %s: %s", path, exc)
            return
        with self._lock:
            self._puts += 1
            # Recounted from disk now and then, not only once: the main process and the export
            # workers write to one directory, and each counting its own writes alone would let
            # it grow to a multiple of the bound.
            if self._size is None or self._puts % RECOUNT_EVERY == 0:
                self._size = self.size_bytes()
            else:
                self._size += len(blob)
            if self._size > self.max_bytes:
                self._evict()

    def size_bytes(self) -> int:
        """Bytes the entries take on disk now."""
        total = 0
        for path in self.entries():
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total

    def entries(self) -> list[Path]:
        return sorted(self.root.glob(f"*/*{_SUFFIX}")) if self.root.exists() else []

    def clear(self) -> None:
        with self._lock:
            for path in self.entries():
                path.unlink(missing_ok=True)
            self._size = 0

    # ---- internals -----------------------------------------------------------------------
    def _forget(self, path: Path, size: int) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # a shared, read-only cache: the entry stays, a miss all the same
            pass
        if self._size is not None:
            self._size = max(0, self._size - size)

    def _evict(self) -> None:
        """Delete least recently used entries until the cache is at 90 % of its bound, and the
        temp files of writers killed mid-write (outside the entries, so never counted)."""
        stale = time.time() - STALE_TEMP_S
        for path in self.root.glob("*/.*.tmp"):
            try:
                if path.stat().st_mtime < stale:
                    path.unlink(missing_ok=True)
            except OSError:
                pass
        stats = []
        for path in self.entries():
            try:
                st = path.stat()
            except OSError:
                continue
            stats.append((st.st_mtime, st.st_size, path))
        stats.sort()
        total = sum(size for _, size, _ in stats)
        target = int(0.9 * self.max_bytes)
        for _, size, path in stats:
            if total <= target:
                break
            try:
                path.unlink(missing_ok=True)
            except OSError:  # not ours to delete (a shared cache): counted, left
                continue
            total -= size
        self._size = total


def _pack(data: bytes) -> bytes:
    return _MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data


def _unpack(blob: bytes) -> bytes | None:
    head = len(_MAGIC) + _DIGEST_LEN + 1
    if len(blob) < head or not blob.startswith(_MAGIC):
        return None
    digest, data = blob[len(_MAGIC):head - 1], blob[head:]
    return data if hashlib.sha256(data).hexdigest().encode() == digest else None


__all__ = ["DEFAULT_MAX_BYTES", "ENV_VAR", "ExportCache", "default_dir", "export_key", "exporter_fingerprint"]
