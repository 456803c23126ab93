"""Does the search's signal rank subnets the way a long retraining does? (issue 11)

On a finished search run (its split, training scale and recipe), `--subnets` candidates spread
over latency are picked the way the race picks its entrants (`search.race.pick_entrants`: the
search's choice, then each next the farthest in latency rank: the run's own entrants are among
them, and their race results are reused). Each is scored three ways:

- inherited: its val mIoU with the supernet's weights (the search's score, from ``search.json``);
- race: its mean training loss over the second half of the run's race (same epochs, same seeded
  batches, from scratch: `search.stages.race.train_entrant`), and its val mIoU at the end;
- retrained: trained from scratch by the run's retraining recipe for `--epochs`, its best-val
  weights with the decision calibrated on val, scored on the test split (tiles of the network input).

and the Kendall tau (`scipy.stats.kendalltau`) of each early signal against the retrained test
mIoU is reported with its p-value::

    python benchmarks/race_ranking.py --run /work/runs/mt60r/search --subnets 6 --epochs 100 \\
        --jobs 2 --out /work/runs/race_ranking --json benchmarks/results/race_ranking_mt.json

``--jobs 2`` trains two subnets at once with one torch thread each.

Every subnet's result is kept (``--out``) and the JSON rewritten after each, so an interrupted
benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch
from scipy.stats import kendalltau

from autonad_edge.io import atomic_write_json
from autonad_edge.search.evolution import Candidate, final_ms
from autonad_edge.search.pipeline import PipelineConfig
from autonad_edge.search.race import pick_entrants
from autonad_edge.search.planning import race_epochs
from autonad_edge.search.stages.race import train_entrant
from autonad_edge.space import SearchSpace
from autonad_edge.training.rundata import load_run_data

sys.path.insert(0, str(Path(__file__).parent))
from retrain_init import retrain_and_test  # noqa: E402

SIGNALS = {  # name: (the row's field, the sign that makes "larger" mean "better")
    "inherited val mIoU": ("inherited_miou", 1.0),
    "race training loss": ("race_loss", -1.0),
    "race val mIoU": ("race_miou", 1.0),
}


@lru_cache(maxsize=1)
def load_run(run: str, threads: int):
    """The run's config (with its planned epochs), space and data, once per process."""
    torch.set_num_threads(threads)
    run_dir = Path(run)
    cfg = PipelineConfig.load(run_dir / "config.json").resolved()
    saved = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    cfg = replace(cfg, **saved["epochs"])  # the run's planned epochs, as it ran
    data = load_run_data(cfg.format, cfg.data, cfg.image_size, cfg.seed, synthetic_count=cfg.synthetic_count,
                         manifest=run_dir / "splits.json", keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    return cfg, SearchSpace.resolve(cfg.space), data


def race_job(run: str, threads: int, candidate: dict, epochs: int, out: str) -> dict:
    """One subnet's race (`train_entrant`, resumable in `out`)."""
    cfg, space, data = load_run(run, threads)
    raced = train_entrant(cfg, data, space, Path(out), Candidate.from_dict(candidate), epochs)
    return {"race_loss": raced.train_loss, "race_miou": raced.raced_miou, "race_steps": raced.steps}


def retrain_job(run: str, threads: int, candidate: dict, epochs: int, out: str) -> dict:
    """One subnet trained from scratch by the run's recipe for `epochs`, scored on test (kept in
    ``out/test.json``)."""
    out_dir = Path(out)
    done = out_dir / "test.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    cfg, space, data = load_run(run, threads)
    config = replace(cfg, retrain_epochs=epochs, retrain_init="scratch").retrain_config("unused")
    row = {**retrain_and_test(config, data, space, Candidate.from_dict(candidate).arch, out_dir,
                              int(cfg.image_size)), "threads": threads}
    atomic_write_json(done, row)
    return row


def taus(rows: list[dict]) -> dict[str, dict]:
    """Kendall tau of each early signal against the retrained test mIoU."""
    test = [r["test_miou"] for r in rows]
    out = {}
    for name, (field, sign) in SIGNALS.items():
        tau, p = kendalltau([sign * r[field] for r in rows], test)
        out[name] = {"tau": float(tau), "p": float(p)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished `autonad-edge search` output directory")
    parser.add_argument("--subnets", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=100, help="retraining epochs of each subnet")
    parser.add_argument("--out", default="runs/race_ranking")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch threads in all")
    parser.add_argument("--jobs", type=int, default=1,
                        help="subnets trained at once (each with torch-threads / jobs threads)")
    parser.add_argument("--json", default="benchmarks/results/race_ranking.json")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.out)
    threads = max(1, args.torch_threads // args.jobs)
    cfg, _, _ = load_run(str(run), args.torch_threads)
    search = json.loads((run / "search" / "search.json").read_text(encoding="utf-8"))
    candidates = [Candidate.from_dict(d) for d in search["candidates"]]
    chosen = next(c for c in candidates if c.arch.hash == search["chosen"])
    picked = pick_entrants(candidates, chosen, args.subnets)
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    epochs = (report.get("race") or {}).get("epochs") or race_epochs(cfg, cfg.race_entrants or 4)
    print(f"{len(picked)} subnets; race {epochs} epochs each, retraining {args.epochs} epochs each, "
          f"{args.jobs} at a time with {threads} torch threads each", file=sys.stderr, flush=True)
    rows = [{"arch": c.arch.summary(), "hash": c.arch.hash, "params": c.params, "latency_ms": final_ms(c),
             "inherited_miou": c.miou} for c in picked]

    def write() -> None:
        done = [r for r in rows if "test_miou" in r]
        atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv), "run": str(run),
                                      "race_epochs": epochs, "retrain_epochs": args.epochs, "rows": rows,
                                      "kendall_tau": taus(done) if len(done) >= 3 else None})

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # The races first (the run's own entrants' results are reused), then the retrainings.
        races = []
        for c in picked:
            race_dir = run / "race" / c.arch.hash
            if not (race_dir / "race.json").exists():
                race_dir = out / "race" / c.arch.hash
            races.append(pool.submit(race_job, str(run), threads, c.to_dict(), epochs, str(race_dir)))
        for row, future in zip(rows, races):
            row.update(future.result())
            print(f"race {row['arch']}: loss {row['race_loss']:.4f}, val {100 * row['race_miou']:.1f} %",
                  file=sys.stderr, flush=True)
        retrains = [pool.submit(retrain_job, str(run), threads, c.to_dict(), args.epochs,
                                str(out / "retrain" / c.arch.hash)) for c in picked]
        for row, future in zip(rows, retrains):
            row.update(future.result())
            print(f"retrained {row['arch']}: {row['steps']} steps in {row['wall_s']:.0f} s, test mIoU "
                  f"{100 * row['test_miou']:.2f} % (defects {100 * row['test_miou_defects']:.2f} %)",
                  file=sys.stderr, flush=True)
            write()
    for name, t in taus(rows).items():
        print(f"Kendall tau, {name} vs retrained test mIoU: {t['tau']:+.2f} (p {t['p']:.2f})", file=sys.stderr)
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
