"""Device fingerprints on the host: what a latency number is valid for.

The agent collects the fields on the device (`autonad_agent.fingerprint`); the host
recomputes the hash itself rather than trusting the one on the wire, and uses it to key
the latency table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from autonad_agent.fingerprint import fingerprint_hash, host_fingerprint

__all__ = ["Fingerprint", "fingerprint_hash", "host_fingerprint"]


@dataclass(frozen=True)
class Fingerprint:
    """An immutable device fingerprint with its stable hash."""

    fields: Mapping[str, str]
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        frozen = {str(k): str(v) for k, v in sorted(self.fields.items())}
        object.__setattr__(self, "fields", frozen)
        object.__setattr__(self, "hash", fingerprint_hash(frozen))

    def __hash__(self) -> int:
        return hash(self.hash)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and other.hash == self.hash

    def to_json(self) -> str:
        return json.dumps(dict(self.fields), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        return cls(json.loads(text))

    def summary(self) -> str:
        """One line naming the device and runtime, e.g. for listings."""
        f = self.fields
        device = f.get("device") or f.get("board") or f.get("cpu_model", "?")
        runtime = f"{f.get('runtime', '?')} {f.get('runtime_version', '')}".strip()
        threads = f.get("threads", "?")
        return f"{self.hash}  {device} / {runtime} / {threads} thread{'' if threads == '1' else 's'}"

    def differences(self, other: Fingerprint) -> dict[str, tuple[str | None, str | None]]:
        """Fields that differ: name -> (value here, value in `other`)."""
        keys = set(self.fields) | set(other.fields)
        return {
            key: (self.fields.get(key), other.fields.get(key))
            for key in sorted(keys)
            if self.fields.get(key) != other.fields.get(key)
        }
