"""Non-blocking step hooks: hand each trained subnet to slow consumers (e.g. latency agents)
without slowing the training step.

    hook = BackgroundHook(lambda step, arch: client.measure(arch), maxsize=256)
    trainer.add_step_hook(hook)          # the step only enqueues
    trainer.fit()
    hook.close()                          # drain (or drop) what is left, stop the thread

The training side never waits: when the queue is full the item is dropped and counted
(`dropped`). Exceptions in the consumer are counted (`errors`) and the last one kept
(`last_error`), never raised into training.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_STOP = object()


class BackgroundHook:
    def __init__(self, fn: Callable[[int, Any], None], maxsize: int = 1024, name: str = "step-hook") -> None:
        self.fn = fn
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.errors = 0
        self.handled = 0
        self.last_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __call__(self, step: int, arch: Any) -> None:
        if self._closed:
            return
        try:
            self.queue.put_nowait((step, arch))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            try:
                self.fn(*item)
                self.handled += 1
            except BaseException as exc:  # noqa: BLE001 - never let a consumer kill the thread
                self.errors += 1
                self.last_error = exc

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the worker after the queued items (``drain=True``) or right away."""
        if self._closed:
            return
        self._closed = True
        if not drain:
            try:
                while True:
                    self.queue.get_nowait()
                    self.dropped += 1
            except queue.Empty:
                pass
        self.queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> "BackgroundHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["BackgroundHook"]
