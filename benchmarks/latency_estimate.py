"""How well the latency table predicts whole subnets, and what background profiling costs.

1. Profiles every unit of the space at the input size on the target into a latency table and
   measures random subnets end to end (whole exported networks): a *fit* set and a disjoint
   *evaluation* set (at least 50). By default (--protocol rounds) everything is exported first
   and then measured by `latency.protocol.measure_in_rounds`: several rounds, each model once
   a round in a fresh order, a reference subnet between every few models, each model's floor
   over the rounds (--estimate floor, the default: its fastest round, seen twice) or the
   median of its values scaled by the host's speed at the time (--estimate median), extra
   rounds for what stays unstable, and the reference's drift reported. --protocol single measures
   each model once, long, in one shuffled order (the session-4 protocol); --no-interleave
   profiles first, like a real `latency profile` followed by later end-to-end checks.
   --background-load N keeps N busy processes running while it measures (a loaded host).
2. Reports, nn-Meter style, the share of evaluation subnets whose estimate is within +-5% and
   +-10% of the measurement, and the RMSPE: for the plain sum of the units' medians, and for
   the sum corrected by the linear model fitted on the fit set only; and the same with each
   measurement's minimum instead of its median (less sensitive to other load).
3. (Unless --skip-overhead) Times simulated supernet-training steps (HybridSupernet forward +
   backward + AdamW on random subnets) without and with a `BackgroundProfiler` (continuous
   and deferred), and how much the continuously measured latencies moved under training load.

    python benchmarks/latency_estimate.py --target local --local-threads 1 --space tiny \
        --image-size 320 --fit 25 --eval 50 --out benchmarks/results/latency_estimate.json

--local-threads N runs the in-process agent with N ONNX Runtime threads (the built-in `local`
uses every core: on a small machine shared with other work its timings are dominated by the
contention). Entries are kept in --table between runs (re-runs measure only what is new) and
exports in --export-cache: export dominates a clean run on a small host (1-4 s per unit, 5-15 s
per whole subnet with torch.export): the tiny space at 320 px takes about 25 minutes clean on
2 shared cores, about 10 with the exports cached.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autonad_agent.measure import MeasurementPolicy
from autonad_edge.cli.common import load_space
from autonad_edge.latency import LatencyTable, open_target
from autonad_edge.latency.background import BackgroundProfiler
from autonad_edge.latency.estimator import LatencyEstimator, accuracy_report
from autonad_edge.latency.profiler import export_bytes, profile
from autonad_edge.latency.protocol import ESTIMATES


@contextlib.contextmanager
def open_pool(args, table):
    """`open_target(args.target)`; --local-threads sets the thread count of `local`. The pool
    has no table of its own: what is recorded where is explicit here (the overhead part's
    measurements under training load go to scratch tables only)."""
    if args.local_threads is not None and args.target != "local":
        raise SystemExit("--local-threads applies to --target local only")
    with open_target(args.target, args.targets, local_threads=args.local_threads) as pool:
        yield pool


class DiskExports:
    """ONNX exports kept on disk between runs (--export-cache): export dominates a run, and a
    re-run on another fingerprint (threads, runtime) needs the same models. Keys are unit /
    network signatures plus the flavour and torch version; delete the folder after changing
    model code."""

    def __init__(self, folder: str | None) -> None:
        import torch

        self.folder = Path(folder) if folder else None
        self.tag = f"torch{torch.__version__}"
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, signature: str, flavor: str) -> Path | None:
        if not self.folder:
            return None
        digest = hashlib.sha256(f"{signature}|{flavor}|{self.tag}".encode()).hexdigest()[:24]
        return self.folder / f"{digest}.onnx"

    def get_or_make(self, signature: str, flavor: str, make) -> bytes:
        path = self._path(signature, flavor)
        if path is not None and path.is_file():
            return path.read_bytes()
        data = make()
        if path is not None:
            from autonad_edge.io import atomic_write_bytes

            atomic_write_bytes(path, data)
        return data

    def unit_exporter(self, unit, flavor: str) -> bytes:
        return self.get_or_make(unit.signature, flavor, lambda: export_bytes(unit, flavor))


def measure_networks(est, pool, archs, policy, exports: DiskExports) -> None:
    """Measure each subnet end to end into the table under its network signature, unless the
    table has it (what `LatencyEstimator.measure_end_to_end` does, with the disk cache)."""
    from rich.progress import track

    from autonad_edge.export.onnx_export import export_arch

    key = est.key
    for arch in track(archs, description="subnets end to end"):
        sig = est.network_signature(arch)
        if est.table.get(key.fingerprint, key.backend, key.precision, sig) is not None:
            continue
        data = exports.get_or_make(sig, key.flavor, lambda: export_arch(
            arch, est.space, est.num_classes, est.image_size, key.flavor).SerializeToString())
        est.table.record(sig, pool.measure(data, policy=policy, signature=sig))


def measure_interleaved(est, pool, space, archs, policy, exports: DiskExports, seed: int) -> dict:
    """Export every missing unit and subnet first, then measure them all in one shuffled
    order, so that load from other processes drifting over the run hits units and whole
    subnets alike (on a shared host that drift, not the estimator, otherwise dominates)."""
    from rich.progress import track

    from autonad_edge.export.onnx_export import export_arch
    from autonad_edge.latency.blocks import space_units
    from autonad_edge.latency.profiler import missing_units

    key = est.key
    t0 = time.perf_counter()
    jobs = []
    for unit in track(missing_units(space_units(space, est.num_classes, est.image_size), est.table, key),
                      description="exporting units"):
        jobs.append((unit.signature, exports.unit_exporter(unit, key.flavor)))
    for arch in track(archs, description="exporting subnets"):
        sig = est.network_signature(arch)
        if est.table.get(key.fingerprint, key.backend, key.precision, sig) is None:
            jobs.append((sig, exports.get_or_make(sig, key.flavor, lambda: export_arch(
                arch, est.space, est.num_classes, est.image_size, key.flavor).SerializeToString())))
    export_s = time.perf_counter() - t0
    random.Random(seed).shuffle(jobs)
    t0 = time.perf_counter()
    for sig, data in track(jobs, description="measuring units and subnets, interleaved"):
        est.table.record(sig, pool.measure(data, policy=policy, signature=sig))
    return {"jobs": len(jobs), "export_s": export_s, "measure_s": time.perf_counter() - t0}


def export_all(est, space, archs, exports: DiskExports) -> tuple[dict, float]:
    """Every unit of the space and every subnet in `archs`, exported (from the cache where
    it has them): signature -> ONNX bytes, and the seconds it took."""
    from rich.progress import track

    from autonad_edge.export.onnx_export import export_arch
    from autonad_edge.latency.blocks import space_units

    key = est.key
    t0 = time.perf_counter()
    models = {}
    for unit in track(list(space_units(space, est.num_classes, est.image_size)), description="exporting units"):
        models[unit.signature] = exports.unit_exporter(unit, key.flavor)
    for arch in track(archs, description="exporting subnets"):
        sig = est.network_signature(arch)
        models[sig] = exports.get_or_make(sig, key.flavor, lambda: export_arch(
            arch, est.space, est.num_classes, est.image_size, key.flavor).SerializeToString())
    return models, time.perf_counter() - t0


def measure_rounds(est, pool, space, archs, exports: DiskExports, reference_arch, args) -> dict:
    """Units and subnets measured by the rounds protocol; the robust results go to the table."""
    from rich.progress import Progress

    from autonad_edge.export.onnx_export import export_arch
    from autonad_edge.latency.pool import MeasureJob
    from autonad_edge.latency.protocol import RoundsPolicy, measure_in_rounds, robust_measurement

    models, export_s = export_all(est, space, archs, exports)
    ref_sig = est.network_signature(reference_arch)
    ref_onnx = exports.get_or_make(ref_sig, est.key.flavor, lambda: export_arch(
        reference_arch, est.space, est.num_classes, est.image_size, est.key.flavor).SerializeToString())
    policy = RoundsPolicy(rounds=args.rounds, max_extra_rounds=args.extra_rounds,
                          max_relative_halfwidth=args.max_halfwidth, estimate=args.estimate)
    with Progress() as bar:
        task = bar.add_task("measuring in rounds", total=None)
        result = measure_in_rounds(pool, {sig: MeasureJob(data, signature=sig) for sig, data in models.items()},
                                   MeasureJob(ref_onnx, signature=ref_sig), policy, seed=args.seed,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    for sig, latency in result.latencies.items():
        est.table.record(sig, robust_measurement(latency))
    print(result.summary(), flush=True)
    loads = [h.load_1m for h in result.hosts]
    mhz = [h.cpu_mhz for h in result.hosts if h.cpu_mhz]
    widths = sorted(100 * r.interval.relative_halfwidth for r in result.latencies.values())
    return {
        "models": len(models), "export_s": export_s, "measure_s": result.wall_s, "rounds": result.rounds,
        "measurements": result.measurements, "policy": {k: (v.to_dict() if hasattr(v, "to_dict") else v)
                                                        for k, v in policy.__dict__.items()},
        "reference": {"arch": reference_arch.summary(), "estimate_ms": result.reference.estimate_ms,
                      "relative_halfwidth_pct": 100 * result.reference.interval.relative_halfwidth,
                      "series_ms": result.reference_series_ms},
        "drift": result.drift.__dict__, "unstable": len(result.unstable),
        "halfwidth_pct": {"median": statistics.median(widths), "p90": widths[int(0.9 * (len(widths) - 1))],
                          "max": widths[-1]},
        "host": {"load_1m": [min(loads), max(loads)], "cpu_mhz": [min(mhz), max(mhz)] if mhz else None,
                 "samples": [h.to_dict() for h in result.hosts]},
    }


@contextlib.contextmanager
def background_load(processes: int):
    """`processes` busy loops (each keeps one core busy) for the duration of the block."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def distinct_archs(space, n: int, seed: int, exclude: set[str]) -> list:
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        a = space.sample(rng)
        if a.hash not in seen:
            seen.add(a.hash)
            out.append(a)
    return out


def fmt_row(name: str, r: dict) -> str:
    return (f"{name:<34} {r['n']:>4} {100 * r['within_5pct']:>8.1f}% {100 * r['within_10pct']:>8.1f}% "
            f"{r['rmspe_pct']:>8.2f}% {r['mape_pct']:>7.2f}% {r['max_abs_pct']:>8.1f}% {r['mean_pct']:>+8.2f}%")


def training_overhead(args, space, pool, policy) -> dict:
    """Step times of simulated supernet training without / with background profiling.

    Phases alternate over `--overhead-rounds` rounds (baseline, continuous, deferred), so
    drifting load from other processes hits every mode alike. The continuous profiler runs only
    during its own phases (paused, and idle, in the others); the deferred one only collects
    during steps, and its `flush()` (an epoch end) is timed separately."""
    import torch

    from autonad_edge.latency.pool import MeasureJob
    from autonad_edge.latency.profiler import EXPORT_CACHE, target_key
    from autonad_edge.models.supernet import HybridSupernet

    torch.manual_seed(0)
    model = HybridSupernet(space, args.num_classes, sharing="cross")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    images = torch.randn(args.train_batch, 3, args.train_size, args.train_size)
    masks = torch.randint(0, args.num_classes, (args.train_batch, args.train_size, args.train_size))
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = random.Random(123)

    def steps(n: int, hook=None) -> tuple[list[float], list[float]]:
        times, hook_times = [], []
        for step in range(n):
            arch = space.sample(rng)
            t0 = time.perf_counter()
            model.set_active(arch)
            loss = loss_fn(model(images), masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hook is not None:
                h0 = time.perf_counter()
                hook(step, arch)
                hook_times.append(time.perf_counter() - h0)
            times.append(time.perf_counter() - t0)
        return times, hook_times

    def wait_idle(bg) -> None:
        while bg.busy:
            time.sleep(0.05)

    def summary(times: list[float]) -> dict:
        return {"mean_s": statistics.mean(times), "median_s": statistics.median(times), "n": len(times)}

    steps(3)  # warm-up
    k = args.overhead_steps
    base, cont, cont_hook, deferred, deferred_hook = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, LatencyTable(Path(tmp) / "cont.sqlite") as cont_table, \
            LatencyTable(Path(tmp) / "deferred.sqlite") as deferred_table:
        bg_cont = BackgroundProfiler(pool, cont_table, space, args.train_size, args.num_classes,
                                     mode="continuous", policy=policy)
        bg_def = BackgroundProfiler(pool, deferred_table, space, args.train_size, args.num_classes,
                                    mode="deferred", policy=policy)
        bg_cont.pause()
        for _ in range(args.overhead_rounds):
            t, _h = steps(k)
            base += t
            bg_cont.resume()
            t, h = steps(k, bg_cont)
            cont += t
            cont_hook += h
            bg_cont.pause()
            wait_idle(bg_cont)
            t, h = steps(k, bg_def)
            deferred += t
            deferred_hook += h
        cont_stats = bg_cont.stats
        bg_cont.close(flush=False)
        t0 = time.perf_counter()
        finished = bg_def.flush(timeout=args.flush_timeout)
        flush_s = time.perf_counter() - t0
        bg_def.close(flush=False)
        def_stats = bg_def.stats
        cont_entries = {e.signature: e.median_ms for e in cont_table.entries()}
    result: dict = {"train_size": args.train_size, "train_batch": args.train_batch, "steps_per_phase": k,
                    "rounds": args.overhead_rounds, "torch_threads": torch.get_num_threads()}
    result["baseline"] = summary(base)
    result["continuous"] = {**summary(cont), "hook_mean_us": 1e6 * statistics.mean(cont_hook),
                            "hook_max_us": 1e6 * max(cont_hook), "units_measured": cont_stats.measured,
                            "units_pending": cont_stats.pending_units, "export_s": cont_stats.export_s,
                            "busy_s": cont_stats.measure_s}
    result["deferred"] = {**summary(deferred), "hook_mean_us": 1e6 * statistics.mean(deferred_hook),
                          "hook_max_us": 1e6 * max(deferred_hook), "flush_s": flush_s,
                          "flush_finished": finished, "units_measured": def_stats.measured,
                          "units_left": def_stats.pending_units, "export_s": def_stats.export_s}
    b = result["baseline"]["mean_s"]
    bm = result["baseline"]["median_s"]
    for mode in ("continuous", "deferred"):
        result[mode]["overhead_pct"] = 100 * (result[mode]["mean_s"] - b) / b
        result[mode]["overhead_median_pct"] = 100 * (result[mode]["median_s"] - bm) / bm
    # How much training load moved the continuously measured numbers: re-measure the same units
    # with training stopped and compare medians. Their bytes are in the export cache; a slightly
    # different policy keeps the agent from answering from its result cache.
    quiet_policy = MeasurementPolicy(**{**policy.to_dict(), "max_runs": policy.max_runs + 1})
    key = target_key(pool)
    jobs = [MeasureJob(onnx=data, signature=sig, policy=quiet_policy)
            for sig in cont_entries if (data := EXPORT_CACHE.get((sig, key.flavor))) is not None]
    if jobs:
        results = pool.measure_many(jobs, return_exceptions=True)
        ratios = [cont_entries[j.signature] / r.median_ms for j, r in zip(jobs, results)
                  if not isinstance(r, BaseException) and r.median_ms > 0]
        if ratios:
            result["continuous"]["latency_ratio_vs_quiet_median"] = statistics.median(ratios)
            result["continuous"]["latency_ratio_vs_quiet_max"] = max(ratios)
            result["continuous"]["latency_ratio_units"] = len(ratios)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="local")
    parser.add_argument("--targets", default=None, help="targets TOML")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--fit", type=int, default=25, help="subnets to fit the correction on")
    parser.add_argument("--eval", type=int, default=50, help="subnets to evaluate on (disjoint from --fit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-duration-ms", type=float, default=500.0, help="timed duration per model")
    parser.add_argument("--table", default="runs/bench/latency_estimate.sqlite")
    parser.add_argument("--out", default="benchmarks/results/latency_estimate.json")
    parser.add_argument("--local-threads", type=int, default=None,
                        help="with --target local: the agent's ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--export-cache", default="runs/bench/exports", help="keep exports here between runs ('' = off)")
    parser.add_argument("--protocol", choices=["rounds", "single"], default="rounds",
                        help="rounds: latency.protocol (the default); single: one long measurement each")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--extra-rounds", type=int, default=4, help="at most, for models still unstable")
    parser.add_argument("--max-halfwidth", type=float, default=0.05,
                        help="a model is stable when its interval's half-width is within this share")
    parser.add_argument("--estimate", choices=ESTIMATES, default="floor",
                        help="rounds: each model's floor (min over rounds, raw) or median (normalised)")
    parser.add_argument("--background-load", type=int, default=0, help="busy processes running while measuring")
    parser.add_argument("--export-only", action="store_true",
                        help="fill --export-cache with every model the run measures, measure nothing")
    parser.add_argument("--no-interleave", action="store_true",
                        help="with --protocol single: profile all units first, then the subnets")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--overhead-steps", type=int, default=10, help="training steps per phase")
    parser.add_argument("--overhead-rounds", type=int, default=3)
    parser.add_argument("--flush-timeout", type=float, default=180.0)
    parser.add_argument("--train-size", type=int, default=128, help="training crop of the overhead part")
    parser.add_argument("--train-batch", type=int, default=4)
    args = parser.parse_args()

    space = load_space(args.space)
    policy = MeasurementPolicy(warmup_runs=10, warmup_ms=min(200.0, args.min_duration_ms), min_runs=30,
                               min_duration_ms=args.min_duration_ms, max_runs=5000, max_cv=0.10, max_repeats=2)
    size = (args.image_size, args.image_size)
    t_start = time.perf_counter()
    out: dict = {"command": " ".join(["python", "benchmarks/latency_estimate.py"] + sys.argv[1:]),
                 "target": args.target, "space": args.space, "image_size": list(size),
                 "num_classes": args.num_classes, "policy": policy.to_dict(), "host": platform.node(),
                 "host_cpus": os.cpu_count()}
    exports = DiskExports(args.export_cache)
    out["background_load"] = args.background_load
    with LatencyTable(args.table) as table, open_pool(args, table) as pool, background_load(args.background_load):
        est = LatencyEstimator(table, space, size, args.num_classes, pool=pool, policy=policy,
                               end_to_end_policy=policy, correct=False)
        eval_archs = distinct_archs(space, args.eval, args.seed + 1, set())
        fit_archs = distinct_archs(space, args.fit, args.seed + 2, {a.hash for a in eval_archs})
        reference = distinct_archs(space, 1, args.seed + 3, {a.hash for a in eval_archs + fit_archs})[0]
        if args.export_only:
            models, export_s = export_all(est, space, fit_archs + eval_archs + [reference], exports)
            print(f"exported {len(models)} models in {export_s:.0f} s into {args.export_cache}")
            return
        if args.protocol == "rounds":
            out["rounds"] = measure_rounds(est, pool, space, fit_archs + eval_archs, exports, reference, args)
        elif not args.no_interleave:
            out["interleaved"] = measure_interleaved(est, pool, space, fit_archs + eval_archs, policy, exports,
                                                     args.seed)
        t0 = time.perf_counter()
        report = profile(space, pool, table, size, args.num_classes, policy=policy, progress=True,
                         exporter=exports.unit_exporter)
        out["profile"] = {"units": report.considered, "known": report.known, "measured": report.measured,
                          "unstable": report.unstable, "failed": len(report.failed),
                          "export_s": report.export_s, "seconds": time.perf_counter() - t0}
        print(report.summary(), flush=True)
        out["fingerprint"] = {"hash": est.key.fingerprint.hash, "summary": est.key.fingerprint.summary(),
                              "fields": dict(est.key.fingerprint.fields)}
        t0 = time.perf_counter()
        # Interleaved, so drifting background load affects both sets alike.
        order = fit_archs + eval_archs
        random.Random(args.seed).shuffle(order)
        measure_networks(est, pool, order, policy, exports)
        out["end_to_end_s"] = time.perf_counter() - t0
        out["accuracy"], out["correction"] = {}, {}
        for stat in ("median", "min"):
            e = est if stat == "median" else LatencyEstimator(
                table, space, size, args.num_classes, pool=pool, key=est.key, correct=False, stat=stat)
            fit_ms = [e.measure_end_to_end(a) for a in fit_archs]  # from the table: no re-measuring
            eval_ms = [e.measure_end_to_end(a) for a in eval_archs]
            raw_eval = [e.raw_sum(a) for a in eval_archs]
            correction = e.fit(list(zip(fit_archs, fit_ms)))
            corrected_eval = [e.estimate(a) for a in eval_archs]
            out["accuracy"][stat] = {
                "raw_sum": accuracy_report(raw_eval, eval_ms),
                "corrected": accuracy_report(corrected_eval, eval_ms),
                "raw_sum_on_fit_set": accuracy_report([e.raw_sum(a) for a in fit_archs], fit_ms),
                "measured_range_ms": [min(eval_ms), max(eval_ms)],
            }
            out["correction"][stat] = {k: v for k, v in correction.to_dict().items() if k != "meta"}
            out.setdefault("subnets", []).extend(
                [{"arch": a.hash, "summary": a.summary(), "stat": stat, "set": "eval", "measured_ms": m,
                  "sum_ms": r, "estimate_ms": c} for a, m, r, c in zip(eval_archs, eval_ms, raw_eval, corrected_eval)]
                + [{"arch": a.hash, "summary": a.summary(), "stat": stat, "set": "fit", "measured_ms": m,
                    "sum_ms": e.raw_sum(a)} for a, m in zip(fit_archs, fit_ms)]
            )
        if not args.skip_overhead:
            t0 = time.perf_counter()
            out["training_overhead"] = training_overhead(args, space, pool, policy)
            out["training_overhead"]["seconds"] = time.perf_counter() - t0
    out["seconds"] = time.perf_counter() - t_start

    print()
    print(f"target {args.target}: {out['fingerprint']['summary']}")
    print(f"space {args.space} at {args.image_size}x{args.image_size}; correction fitted on {len(fit_archs)} subnets, "
          f"evaluated on {len(eval_archs)} others")
    print(f"{'estimator':<34} {'n':>4} {'±5%':>9} {'±10%':>9} {'RMSPE':>9} {'MAPE':>8} {'max|err|':>9} {'bias':>9}")
    for stat, acc in out["accuracy"].items():
        lo, hi = acc["measured_range_ms"]
        c = out["correction"][stat]
        print(f"-- {stat} of each measurement (subnets {lo:.2f}-{hi:.2f} ms; ridge {c['ridge']:g}, "
              f"LOO RMSPE on the fit set {c['loo_rmspe']:.2f}%)")
        print(fmt_row(f"sum of unit {stat}s", acc["raw_sum"]))
        print(fmt_row("sum + fitted correction", acc["corrected"]))
    if "training_overhead" in out:
        o = out["training_overhead"]
        print(f"\nsimulated supernet training (batch {o['train_batch']} at {o['train_size']} px, "
              f"{o['rounds']} rounds x {o['steps_per_phase']} steps per mode): "
              f"baseline {1e3 * o['baseline']['median_s']:.1f} ms/step median ({1e3 * o['baseline']['mean_s']:.1f} mean)")
        for mode in ("continuous", "deferred"):
            m = o[mode]
            if mode == "deferred":
                extra = (f"; epoch-end flush {m['flush_s']:.1f} s measured {m['units_measured']} units"
                         f"{'' if m['flush_finished'] else ' (timed out, ' + str(m['units_left']) + ' left)'}")
            else:
                extra = f"; {m['units_measured']} units measured meanwhile"
                if "latency_ratio_vs_quiet_median" in m:
                    extra += (f", recorded latency x{m['latency_ratio_vs_quiet_median']:.2f} median "
                              f"(x{m['latency_ratio_vs_quiet_max']:.2f} max) of a quiet re-measurement")
            print(f"  {mode:<10} {1e3 * m['median_s']:.1f} ms/step median ({m['overhead_median_pct']:+.1f}%), "
                  f"{1e3 * m['mean_s']:.1f} mean ({m['overhead_pct']:+.1f}%), "
                  f"hook {m['hook_mean_us']:.0f} us mean / {m['hook_max_us']:.0f} us max{extra}")
    if "rounds" in out:
        r = out["rounds"]
        print(f"\ntotal {out['seconds']:.0f} s (export {r['export_s']:.0f} s, {r['models']} units and subnets "
              f"in {r['rounds']} rounds, {r['measurements']} measurements, {r['measure_s']:.0f} s); interval "
              f"half-width median {r['halfwidth_pct']['median']:.1f} %, max {r['halfwidth_pct']['max']:.1f} %; "
              f"{r['unstable']} unstable; reference drift {100 * r['drift']['relative_change']:+.1f} %; "
              f"device load {r['host']['load_1m'][0]:.2f}-{r['host']['load_1m'][1]:.2f}")
    elif "interleaved" in out:
        i = out["interleaved"]
        print(f"\ntotal {out['seconds']:.0f} s (export {i['export_s']:.0f} s, {i['jobs']} units and subnets "
              f"measured interleaved in {i['measure_s']:.0f} s)")
    else:
        print(f"\ntotal {out['seconds']:.0f} s (profile {out['profile']['seconds']:.0f} s, "
              f"end-to-end {out['end_to_end_s']:.0f} s)")
    from autonad_edge.io import atomic_write_json

    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
