"""`ClientPool`: measure many models across all agents of a target.

Each agent gets one thread pulling jobs from a shared queue, so faster or idle agents
take more work and each device measures one model at a time. A job that fails because
its agent died or hung (UNAVAILABLE, DEADLINE_EXCEEDED) goes back to the queue for an
agent that has not tried it; other errors (a bad model, a rejected token) are final. Only
complete measurements are returned or written to the table, each exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

from autonad_agent.backends.base import TensorSpec
from autonad_agent.measure import MeasurementPolicy
from autonad_edge.latency.client import AgentClient, AgentError, DeviceInfo, Measurement
from autonad_edge.latency.fingerprint import Fingerprint
from autonad_edge.latency.table import LatencyTable

# Pauses before asking a busy agent again (RESOURCE_EXHAUSTED "agent busy"): its slots free as
# other callers' uploads finish, in seconds.
BUSY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

log = logging.getLogger(__name__)


def model_signature(model_sha256: str, inputs: Sequence[TensorSpec]) -> str:
    """Table key of a whole-model measurement: the model's hash and its input specs."""
    shapes = ";".join(f"{s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}" for s in inputs)
    return f"onnx:{model_sha256}|{shapes}"


def onnx_sha256(onnx_bytes: bytes) -> str:
    return hashlib.sha256(onnx_bytes).hexdigest()


@dataclass(frozen=True)
class MeasureJob:
    """One model to measure. `signature` is its latency-table key (default: model_signature)."""

    onnx: bytes
    inputs: tuple[TensorSpec, ...] | None = None
    signature: str | None = None
    policy: MeasurementPolicy | None = None
    fresh: bool = False  # measure even if the agent has this request's result cached
    # Record the result in the pool's table. Off for the short rounds of a protocol that
    # records its own summary: a run stopped half-way must not leave one round's figure there.
    record: bool = True


class PoolExhausted(RuntimeError):
    """Every agent that could take a job failed with a retryable error."""

    def __init__(self, job_index: int, errors: list[AgentError]) -> None:
        detail = "; ".join(str(e) for e in errors) or "no live agent left"
        super().__init__(f"job {job_index}: no agent could measure it ({detail})")
        self.errors = errors


class _Scheduler:
    """Shared job queue with per-job memory of which agents already failed it."""

    def __init__(self, n_jobs: int, agents: Sequence[str], stop_on_error: bool) -> None:
        self.cond = threading.Condition()
        self.queue: deque[int] = deque(range(n_jobs))
        self.results: list[Measurement | BaseException | None] = [None] * n_jobs
        self.unfinished = n_jobs
        self.tried: list[set[str]] = [set() for _ in range(n_jobs)]
        self.errors: list[list[AgentError]] = [[] for _ in range(n_jobs)]
        self.live = set(agents)
        self.stop_on_error = stop_on_error
        self.stopped = False

    def take(self, agent: str) -> int | None:
        """The next job `agent` has not tried, waiting for requeued ones; None when done."""
        with self.cond:
            while True:
                if self.unfinished == 0 or self.stopped or agent not in self.live:
                    return None
                for index in self.queue:
                    if agent not in self.tried[index]:
                        self.queue.remove(index)
                        self.tried[index].add(agent)
                        return index
                self.cond.wait()

    def finish(self, index: int, result: Measurement | BaseException) -> None:
        with self.cond:
            self._finish(index, result)

    def _finish(self, index: int, result: Measurement | BaseException) -> None:
        self.results[index] = result
        self.unfinished -= 1
        if isinstance(result, BaseException) and self.stop_on_error:
            self.stopped = True
        self.cond.notify_all()

    def abandon(self, index: int, error: BaseException) -> None:
        """Fail job `index` after an unexpected error, unless it already ended or was requeued."""
        with self.cond:
            if self.results[index] is None and index not in self.queue:
                self._finish(index, error)

    def retry(self, index: int, agent: str, error: AgentError, agent_dead: bool) -> None:
        """Put a job back for another agent, or fail it if no live agent is left to try."""
        with self.cond:
            self.errors[index].append(error)
            self.queue.appendleft(index)
            if agent_dead:
                self.live.discard(agent)
            self._fail_unservable()

    def retire(self, agent: str) -> None:
        """`agent`'s thread is done: it takes no more jobs."""
        with self.cond:
            self.live.discard(agent)
            self._fail_unservable()

    def _fail_unservable(self) -> None:
        """Fail every queued job that no live agent may still try."""
        for queued in list(self.queue):
            if not self.live - self.tried[queued]:
                self.queue.remove(queued)
                self._finish(queued, PoolExhausted(queued, self.errors[queued]))
        self.cond.notify_all()


class ClientPool:
    """Spreads measurements over `clients` (all agents of one target); see module doc."""

    def __init__(
        self,
        clients: Sequence[AgentClient],
        *,
        backend: str | None = None,
        precision: str = "fp32",
        table: LatencyTable | None = None,
    ) -> None:
        if not clients:
            raise ValueError("a pool needs at least one agent")
        addresses = [c.address for c in clients]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"duplicate agent addresses in {addresses}")
        self.clients = list(clients)
        self.backend = backend
        self.precision = precision
        self.table = table

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def device_info(self) -> list[DeviceInfo]:
        return [client.device_info() for client in self.clients]

    def fingerprint(self) -> Fingerprint:
        """The fingerprint every agent reports for the pool's backend (to look up the
        table before measuring). Raises if agents differ or do not report one."""
        fingerprints = {}
        for info in self.device_info():
            backend = info.backend(self.backend)
            if backend.fingerprint is None:
                raise RuntimeError(f"backend {backend.name} is not available on agent {info.address}: {backend.reason}")
            fingerprints[info.address] = backend.fingerprint
        if len(set(fingerprints.values())) != 1:
            listing = ", ".join(f"{address}: {fp.summary()}" for address, fp in fingerprints.items())
            raise RuntimeError(f"the target's agents are different devices ({listing})")
        return next(iter(fingerprints.values()))

    def measure(
        self,
        onnx_bytes: bytes,
        inputs: Sequence[TensorSpec] | None = None,
        *,
        policy: MeasurementPolicy | None = None,
        signature: str | None = None,
    ) -> Measurement:
        """Measure one model on whichever agent is free, failing over if it dies."""
        job = MeasureJob(onnx_bytes, tuple(inputs) if inputs else None, signature, policy)
        result = self.measure_many([job])[0]
        assert isinstance(result, Measurement)
        return result

    def measure_many(
        self, jobs: Iterable[MeasureJob], *, return_exceptions: bool = False
    ) -> list[Measurement | BaseException]:
        """Measure all `jobs`, in parallel across agents; results in job order.

        With a table, each completed measurement is recorded as it arrives. The first
        final error is raised (after in-flight jobs finish) unless `return_exceptions`,
        which puts exceptions in the result list instead.
        """
        jobs = list(jobs)
        if not jobs:
            return []
        scheduler = _Scheduler(len(jobs), [c.address for c in self.clients], stop_on_error=not return_exceptions)
        with ThreadPoolExecutor(max_workers=len(self.clients), thread_name_prefix="latency-pool") as executor:
            for future in [executor.submit(self._agent_loop, client, jobs, scheduler) for client in self.clients]:
                future.result()
        # Jobs are left unrun (None) only after a final error, which is raised here.
        first_error = next((r for r in scheduler.results if isinstance(r, BaseException)), None)
        if first_error is not None and not return_exceptions:
            raise first_error
        return [r for r in scheduler.results if r is not None]

    def _agent_loop(self, client: AgentClient, jobs: list[MeasureJob], scheduler: _Scheduler) -> None:
        try:
            while (index := scheduler.take(client.address)) is not None:
                try:
                    self._run_job(client, index, jobs[index], scheduler)
                except BaseException as exc:
                    # A job taken must end, or the other agents' threads wait for it forever.
                    scheduler.abandon(index, exc)
                    raise
        finally:
            # Also on an unexpected exception: jobs must not wait for a thread that is gone.
            scheduler.retire(client.address)

    def _measure(self, client: AgentClient, job: MeasureJob) -> Measurement:
        """`job` on `client`, asked again after a pause while the agent says it is busy (its
        upload slots taken by other hosts or runs sharing the device): about a minute in all."""
        def send() -> Measurement:
            return client.measure(job.onnx, job.inputs, backend=self.backend, precision=self.precision,
                                  policy=job.policy, fresh=job.fresh)

        for pause_s in BUSY_PAUSES_S:
            try:
                return send()
            except AgentError as exc:
                if not exc.busy:
                    raise
            time.sleep(pause_s)
        return send()

    def _run_job(self, client: AgentClient, index: int, job: MeasureJob, scheduler: _Scheduler) -> None:
        try:
            measurement = self._measure(client, job)
        except AgentError as exc:
            if not exc.retryable:
                scheduler.finish(index, exc)
                return
            dead = not self._still_serving(client)
            log.warning("agent %s failed job %d (%s)%s", client.address, index, exc.code.name,
                        "; dropping it from the pool" if dead else "")
            scheduler.retry(index, client.address, exc, agent_dead=dead)
            return
        except Exception as exc:  # a malformed job (e.g. empty model): that job fails
            scheduler.finish(index, exc)
            return
        if self.table is not None and job.record:
            signature = job.signature or model_signature(measurement.model_sha256, measurement.inputs)
            try:
                self.table.record(signature, measurement)
            except Exception as exc:  # e.g. disk full: the job failed, others may not
                scheduler.finish(index, exc)
                return
        scheduler.finish(index, measurement)

    @staticmethod
    def _still_serving(client: AgentClient) -> bool:
        """After a timeout: a hung or dead agent leaves the pool, a slow model does not."""
        try:
            return client.health(timeout_s=3.0, wait_for_ready=False) == "SERVING"
        except (AgentError, ValueError):  # ValueError: the pool's channel was closed meanwhile
            return False
