"""Does a shorter block-timing policy change what the latency table records? (issue 15)

Cold, a default run spent about 17 s of its supernet stage timing 131 blocks (session 15; 101
units since blocks are timed as their parts, session 18) with the `fast` policy
(`presets.measurement_policy`; 20 ms of warm-up and at least 100 ms of timed runs until session
15, 10 / 40 ms until session 22, 5 / 20 ms since). Each unit of the run's space (`--space` at `--image-size`, `--classes`)
is measured here with that policy, with a shorter one (`--short-warmup-ms`,
`--short-duration-ms`) and with the fast policy again, back to back with each first in turn, for
`--rounds` rounds in a fresh random order each, on the local agent. Reported: the seconds a unit
costs under each policy, how far the short policy's medians stray from the fast policy's, and
how far the fast policy strays from itself measured again at once (the adjacent noise floor) and
between rounds: the short policy is safe where its stray is no larger than the noise floor.

    python benchmarks/block_policy.py --json benchmarks/results/block_policy.json
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time

from autonad_agent.measure import MeasurementPolicy

from autonad_edge.io import atomic_write_json
from autonad_edge.latency import export_pool
from autonad_edge.latency.blocks import space_units
from autonad_edge.latency.targets import open_target
from autonad_edge.search.presets import measurement_policy
from autonad_edge.space import SearchSpace


def quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, round(q * (len(values) - 1)))]  # noqa: E731
    return {"p10": pick(0.1), "median": pick(0.5), "p90": pick(0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--short-warmup-ms", type=float, default=2.5)
    parser.add_argument("--short-duration-ms", type=float, default=10.0)
    parser.add_argument("--local-threads", type=int, default=None)
    parser.add_argument("--json", default="benchmarks/results/block_policy.json")
    args = parser.parse_args()
    fast = measurement_policy("fast")
    short = MeasurementPolicy(**{**fast.to_dict(), "warmup_ms": args.short_warmup_ms,
                                 "min_duration_ms": args.short_duration_ms})
    # The fast policy twice per block: the second measurement is the adjacent noise floor.
    policies = {"fast": fast, "short": short, "fast_again": fast}
    units = space_units(SearchSpace.resolve(args.space), args.classes, args.image_size)
    started = time.perf_counter()
    models = export_pool.export_units(units, "portable")
    export_s = time.perf_counter() - started
    failed = [u for u, m in zip(units, models) if not isinstance(m, bytes)]
    if failed:
        sys.exit(f"{len(failed)} units failed to export: {failed[0].describe()}")
    medians = {name: [[0.0] * len(units) for _ in range(args.rounds)] for name in policies}
    seconds = {name: 0.0 for name in policies}
    rng = random.Random(0)
    with open_target("local", local_threads=args.local_threads) as pool:
        client = pool.clients[0]
        for r in range(args.rounds):
            order = list(range(len(units)))
            rng.shuffle(order)
            for k, i in enumerate(order):
                names = list(policies)
                names = names[k % len(names):] + names[:k % len(names)]  # each arm first in turn
                for name in names:
                    t0 = time.perf_counter()
                    m = client.measure(models[i], policy=policies[name], fresh=True)
                    seconds[name] += time.perf_counter() - t0
                    medians[name][r][i] = m.median_ms
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    n = len(units) * args.rounds
    per_block = {name: seconds[name] / n for name in policies}
    # How far two measurements of the same block stray, in per cent of the first.
    stray = lambda a, b: [100 * (y / x - 1) for x, y in zip(a, b) if x > 0]  # noqa: E731
    short_vs_fast = [d for r in range(args.rounds) for d in stray(medians["fast"][r], medians["short"][r])]
    fast_again = [d for r in range(args.rounds) for d in stray(medians["fast"][r], medians["fast_again"][r])]
    fast_vs_fast = [d for r in range(1, args.rounds) for d in stray(medians["fast"][0], medians["fast"][r])]
    abs_q = lambda ds: quantiles([abs(d) for d in ds]) if ds else None  # noqa: E731
    sums = {name: [sum(medians[name][r]) for r in range(args.rounds)] for name in policies}
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform()},
        "space": args.space, "image_size": args.image_size, "units": len(units), "rounds": args.rounds,
        "policies": {name: p.to_dict() for name, p in policies.items()},
        "export_s": export_s,
        "seconds_per_block": per_block,
        "short_vs_fast_pct": {"signed": quantiles(short_vs_fast), "abs": abs_q(short_vs_fast)},
        "fast_again_vs_fast_pct": {"signed": quantiles(fast_again), "abs": abs_q(fast_again)},
        "fast_vs_fast_pct": {"signed": quantiles(fast_vs_fast) if fast_vs_fast else None, "abs": abs_q(fast_vs_fast)},
        "sum_of_medians_ms": sums,
        "block_median_ms": quantiles(medians["fast"][0]),
    }
    atomic_write_json(args.json, result)
    print(f"seconds a block: fast {per_block['fast']:.3f}, short {per_block['short']:.3f}", file=sys.stderr)
    print(f"|short - fast| / fast: {result['short_vs_fast_pct']['abs']}", file=sys.stderr)
    print(f"|fast again - fast| / fast: {result['fast_again_vs_fast_pct']['abs']}", file=sys.stderr)
    print(f"|fast round k - fast round 1| / fast: {result['fast_vs_fast_pct']['abs']}", file=sys.stderr)
    print(f"sum of the block medians (ms): {sums}", file=sys.stderr)
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
