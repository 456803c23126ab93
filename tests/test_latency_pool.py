"""ClientPool across real agents run as subprocesses: spreading work, failing over."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import logging

import grpc
import pytest

from autonad_agent import testing
from autonad_edge.latency import AgentClient, AgentError, ClientPool, LatencyTable, MeasureJob, MeasurementPolicy

TOKEN = secrets.token_urlsafe(24)
# Each measurement takes about 0.4 s, so an agent killed after 1 s is mid-run.
SLOW = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=400, max_runs=1_000_000,
                         max_cv=100, max_repeats=0)


class CountingTable(LatencyTable):
    """A real table that also counts how often it was written to."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.records = 0

    def record(self, signature, measurement) -> None:
        super().record(signature, measurement)
        self.records += 1


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_pool_fails_over_when_an_agent_dies_mid_run(tmp_path: Path, token_file: Path, caplog):
    caplog.set_level(logging.WARNING, logger="autonad_edge.latency.pool")
    jobs = [MeasureJob(testing.conv_model(seed=i), signature=f"model-{i}", policy=SLOW) for i in range(6)]
    with testing.AgentProcess(token_file) as doomed, testing.AgentProcess(token_file) as survivor:
        clients = [AgentClient(a.address, token=TOKEN, timeout_s=60) for a in (doomed, survivor)]
        with CountingTable(tmp_path / "t.sqlite") as table, ClientPool(clients, table=table) as pool:
            killer = threading.Timer(1.0, doomed.kill)
            killer.start()
            try:
                started = time.monotonic()
                results = pool.measure_many(jobs)
            finally:
                killer.cancel()
            assert time.monotonic() - started < 30
            failovers = [r for r in caplog.records if f"agent {doomed.address} failed job" in r.getMessage()]
            assert failovers, "the agent was not killed while measuring"
            assert len(results) == 6 and all(r.runs >= 5 for r in results)
            by_agent = {r.agent for r in results}
            assert survivor.address in by_agent
            # Every job recorded exactly once, none lost, none twice.
            assert table.records == 6
            assert sorted(e.signature for e in table.entries()) == sorted(j.signature for j in jobs)


def test_pool_spreads_work_and_does_not_retry_bad_requests(token_file: Path):
    policy = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=150, max_runs=1_000_000,
                               max_cv=100, max_repeats=0)
    with testing.AgentProcess(token_file) as a, testing.AgentProcess(token_file) as b:
        clients = [AgentClient(x.address, token=TOKEN, timeout_s=60) for x in (a, b)]
        with ClientPool(clients) as pool:
            results = pool.measure_many([MeasureJob(testing.conv_model(seed=10 + i), policy=policy) for i in range(4)])
            assert {r.agent for r in results} == {a.address, b.address}
            outcome = pool.measure_many(
                [MeasureJob(testing.unknown_op_model(), policy=policy), MeasureJob(testing.conv_model(), policy=policy)],
                return_exceptions=True,
            )
            assert isinstance(outcome[0], AgentError) and outcome[0].code == grpc.StatusCode.INVALID_ARGUMENT
            assert outcome[1].runs >= 5
            with pytest.raises(AgentError):
                pool.measure(testing.unknown_op_model(), policy=policy)
            assert pool.fingerprint() == results[0].fingerprint  # same machine, same fingerprint


class _Interrupted(BaseException):
    """Escapes the pool's per-job error handling, as an interrupt would."""


class InterruptingTable(LatencyTable):
    """A real table whose first write is interrupted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.interrupted = False

    def record(self, signature, measurement) -> None:
        if not self.interrupted:
            self.interrupted = True
            raise _Interrupted()
        super().record(signature, measurement)


def test_an_unexpected_error_in_one_agents_thread_does_not_hang_the_others(tmp_path: Path, token_file: Path):
    # The job the failing thread had taken must end, or the other agent's thread waits for it
    # forever and measure_many never returns.
    policy = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=3, min_duration_ms=5, max_runs=50, max_cv=100,
                               max_repeats=0)
    jobs = [MeasureJob(testing.conv_model(seed=20 + i), signature=f"m{i}", policy=policy) for i in range(4)]
    outcome: list[BaseException | None] = []
    with testing.AgentProcess(token_file) as a, testing.AgentProcess(token_file) as b:
        clients = [AgentClient(x.address, token=TOKEN, timeout_s=60) for x in (a, b)]
        with InterruptingTable(tmp_path / "t.sqlite") as table, ClientPool(clients, table=table) as pool:
            def run() -> None:
                try:
                    pool.measure_many(jobs)
                    outcome.append(None)
                except BaseException as exc:  # noqa: BLE001 - the test inspects it
                    outcome.append(exc)

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(120)  # a guard against a hang, not a speed check
            assert not thread.is_alive(), "measure_many hung after one agent's thread failed"
    assert len(outcome) == 1 and isinstance(outcome[0], _Interrupted)


def test_a_busy_agent_is_asked_again_not_given_up():
    """An agent whose upload slots are taken (other hosts or runs sharing the device) answers
    RESOURCE_EXHAUSTED "agent busy ... retry later": the pool used to fail the job for good.
    It now asks the same agent again after a pause, and the job is measured once a slot frees."""
    from autonad_agent.proto import latency_agent_pb2_grpc as pb_grpc
    from autonad_agent.server import AgentConfig, AgentServer

    server = AgentServer(AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=TOKEN,
                                     rpc_threads=2)).start()  # one upload slot
    release = threading.Event()

    def silent():  # holds the slot until released
        release.wait(30)
        yield from ()

    channel = grpc.insecure_channel(server.address)
    policy = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=0, max_runs=50, max_cv=100,
                               max_repeats=0)
    try:
        holder = pb_grpc.LatencyAgentStub(channel).Measure.future(
            silent(), timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),))
        deadline = time.monotonic() + 30
        while server.service._uploads < 1:  # the holder has its slot
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with AgentClient(server.address, token=TOKEN, timeout_s=60) as client:
            with pytest.raises(AgentError) as busy:
                client.measure(testing.conv_model(), policy=policy)
            assert busy.value.busy and busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            threading.Timer(1.0, release.set).start()
            with ClientPool([client]) as pool:
                assert pool.measure(testing.conv_model(), policy=policy).runs >= 5
        holder.cancel()
    finally:
        release.set()
        channel.close()
        server.stop(grace_s=0)
