"""Latency-aware evolutionary search (AutoNAD Algorithm 1), independent of how candidates are
scored: accuracy, latency and size come in as callables, so the loop is pure Python and
testable without a network or a device.

Per generation: every new candidate is evaluated once (results cached by architecture hash),
the top-k by score become parents, and the next population is the parents plus children. A
child is a crossover of two parents with probability ``crossover_prob`` (each gene from either
parent), else a copy of one parent; it is then mutated, each gene resampled with probability
``mutation_prob``. Sampling and mutation follow the latency-aware prior when one is given.

Score::

    score = mIoU - lambda * latency / reference_latency

with mIoU in [0, 1] and ``reference_latency`` the median estimated latency of the initial
population, so ``lambda`` has no unit: with lambda = 0.1, a subnet twice as slow as a typical
one must be 10 mIoU points better to win.

The state is written atomically after every generation; a resumed run continues with the
same random state, so it ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from autonad_edge.errors import AutonadError
from autonad_edge.io import atomic_write_json
from autonad_edge.space import Arch, ChoicePrior, SearchSpace


class SearchError(AutonadError, RuntimeError):
    """A search that cannot run as configured (e.g. an infeasible budget)."""


def breeding_parents(population: int, parents: int) -> int:
    """The parents a generation keeps: at most two fewer than the population, so that every
    generation breeds (a population of 5 with the cpu preset's 5 parents bred no child, and
    its later generations only re-ranked the first); at least one."""
    return max(1, min(parents, population - 2))


@dataclass(frozen=True)
class EvolutionConfig:
    """Paper defaults: population 100, 50 generations, top-10 parents, p_m 0.2, p_c 0.4."""

    population: int = 100
    generations: int = 50
    parents: int = 10
    mutation_prob: float = 0.2
    crossover_prob: float = 0.4
    latency_weight: float = 0.1  # lambda
    latency_budget_ms: float | None = None
    params_budget: int | None = None
    seed: int = 0
    # Bound on draws per wanted candidate before sampling under a constraint gives up.
    max_tries_per_candidate: int = 200

    @classmethod
    def preset(cls, name: str, **overrides) -> "EvolutionConfig":
        presets = {
            "paper": {},
            "cpu": {"population": 24, "generations": 8, "parents": 6},
            "tiny": {"population": 8, "generations": 3, "parents": 3},
        }
        if name not in presets:
            raise SearchError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})


@dataclass
class Candidate:
    arch: Arch
    miou: float
    mf1: float
    latency_ms: float  # from the latency table (estimate)
    params: int
    generation: int
    measured_ms: float | None = None  # end to end on the target, for the finalists
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "hash": self.arch.hash,
            "summary": self.arch.summary(),
            "miou": self.miou,
            "mf1": self.mf1,
            "latency_ms": self.latency_ms,
            "measured_ms": self.measured_ms,
            "params": self.params,
            "generation": self.generation,
            "extra": self.extra,
            "arch": self.arch.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(
            arch=Arch.from_dict(d["arch"]), miou=d["miou"], mf1=d["mf1"], latency_ms=d["latency_ms"],
            params=d["params"], generation=d["generation"], measured_ms=d.get("measured_ms"),
            extra=d.get("extra", {}),
        )


@dataclass
class SearchCallbacks:
    """How candidates are scored. `evaluate` is the expensive one; it is called once per arch."""

    evaluate: Callable[[Arch], tuple[float, float]]  # -> (mIoU, mF1) on the validation set
    latency_ms: Callable[[Arch], float]  # estimate from the latency table
    params: Callable[[Arch], int]
    # End to end on the target, all at once (interleaved, so a drift of the host hits them alike).
    measure_ms: Callable[[Sequence[Arch]], list[float]] | None = None
    on_generation: Callable[[int, list[Candidate]], None] | None = None
    on_evaluated: Callable[[Candidate], None] | None = None


def latency_tie(a_ms: float, b_ms: float, tolerance: float) -> bool:
    """Whether latencies `a_ms` and `b_ms`, each known to +-`tolerance` (relative), may be
    the same: their intervals a(1 +- t) and b(1 +- t) overlap."""
    return abs(a_ms - b_ms) <= tolerance * (a_ms + b_ms)


def final_ms(c: "Candidate") -> float:
    """Measured end to end where it was, else estimated."""
    return c.measured_ms if c.measured_ms is not None else c.latency_ms


def _rng_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(data) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


def pareto_front(candidates: list[Candidate], use_measured: bool = False) -> list[Candidate]:
    """Candidates no other one beats on both mIoU (higher) and latency (lower), fastest first."""
    def lat(c: Candidate) -> float:
        return c.measured_ms if use_measured and c.measured_ms is not None else c.latency_ms

    front = []
    # A NaN mIoU compares false with everything: left out, it cannot shadow the front.
    for c in sorted((c for c in candidates if math.isfinite(c.miou)), key=lambda c: (lat(c), -c.miou)):
        if not front or c.miou > front[-1].miou:
            front.append(c)
    return front


class EvolutionarySearch:
    def __init__(
        self,
        space: SearchSpace,
        config: EvolutionConfig,
        callbacks: SearchCallbacks,
        prior: ChoicePrior | None = None,
        state_path: str | Path | None = None,
    ) -> None:
        self.space, self.config, self.cb, self.prior = space, config, callbacks, prior
        self.state_path = Path(state_path) if state_path else None
        self.rng = random.Random(config.seed)
        self.cache: dict[str, Candidate] = {}  # every evaluated candidate, by arch hash
        self.population: list[str] = []
        self.generation = 0  # generations completed
        self.reference_ms: float | None = None
        self._latency: dict[str, float] = {}
        self._params: dict[str, int] = {}

    # ---- scoring -------------------------------------------------------------------------
    def latency_of(self, arch: Arch) -> float:
        if arch.hash not in self._latency:
            self._latency[arch.hash] = float(self.cb.latency_ms(arch))
        return self._latency[arch.hash]

    def params_of(self, arch: Arch) -> int:
        if arch.hash not in self._params:
            self._params[arch.hash] = int(self.cb.params(arch))
        return self._params[arch.hash]

    def score(self, c: Candidate, use_measured: bool = False) -> float:
        if not math.isfinite(c.miou):  # an evaluation that failed ranks last, not at random
            return -math.inf
        lat = c.measured_ms if use_measured and c.measured_ms is not None else c.latency_ms
        return c.miou - self.config.latency_weight * lat / (self.reference_ms or 1.0)

    def feasible(self, arch: Arch) -> bool:
        cfg = self.config
        if cfg.latency_budget_ms is not None and self.latency_of(arch) > cfg.latency_budget_ms:
            return False
        if cfg.params_budget is not None and self.params_of(arch) > cfg.params_budget:
            return False
        return True

    def check_budgets(self) -> None:
        """Fail fast when no subnet can meet a budget, naming the best the space reaches."""
        cfg = self.config
        if cfg.latency_budget_ms is None and cfg.params_budget is None:
            return
        extremes = self.space.smallest_subnets()
        if cfg.latency_budget_ms is not None:
            fastest = min(self.latency_of(a) for a in extremes)
            if fastest > cfg.latency_budget_ms:
                raise SearchError(
                    f"latency budget {cfg.latency_budget_ms:g} ms is infeasible: the fastest "
                    f"subnet of this space takes {fastest:.3f} ms on this target"
                )
        if cfg.params_budget is not None:
            smallest = min(self.params_of(a) for a in extremes)
            if smallest > cfg.params_budget:
                raise SearchError(
                    f"parameter budget {cfg.params_budget:,} is infeasible: the smallest "
                    f"subnet of this space has {smallest:,} parameters"
                )

    # ---- candidate generation ------------------------------------------------------------
    def _draw(self, make: Callable[[], Arch], taken: set[str]) -> Arch | None:
        for _ in range(self.config.max_tries_per_candidate):
            arch = make()
            if arch.hash not in taken and self.feasible(arch):
                return arch
        return None

    def _initial_population(self) -> list[Arch]:
        archs: list[Arch] = []
        taken: set[str] = set()
        for _ in range(self.config.population):
            arch = self._draw(lambda: self.space.sample(self.rng, self.prior), taken)
            if arch is None:
                break
            archs.append(arch)
            taken.add(arch.hash)
        if not archs:
            raise SearchError("no candidate satisfies the budgets after bounded sampling")
        return archs

    def _children(self, parents: list[Candidate], count: int, taken: set[str]) -> list[Arch]:
        cfg = self.config

        def make() -> Arch:
            a = self.rng.choice(parents).arch
            if len(parents) > 1 and self.rng.random() < cfg.crossover_prob:
                b = self.rng.choice([p for p in parents if p.arch.hash != a.hash]).arch
                a = self.space.crossover(a, b, self.rng)
            return self.space.mutate(a, self.rng, cfg.mutation_prob, self.prior)

        children = []
        for _ in range(count):
            child = self._draw(make, taken)
            if child is None:
                break
            children.append(child)
            taken.add(child.hash)
        return children

    def _evaluate(self, archs: list[Arch]) -> None:
        for arch in archs:
            if arch.hash in self.cache:
                continue  # never evaluate one architecture twice
            miou, mf1 = self.cb.evaluate(arch)
            cand = Candidate(
                arch, float(miou), float(mf1), self.latency_of(arch), self.params_of(arch), self.generation
            )
            self.cache[arch.hash] = cand
            if self.cb.on_evaluated:
                self.cb.on_evaluated(cand)

    def ranked(self, hashes: list[str] | None = None) -> list[Candidate]:
        pool = [self.cache[h] for h in hashes] if hashes is not None else list(self.cache.values())
        return sorted(pool, key=lambda c: (-self.score(c), c.arch.hash))

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> Candidate:
        cfg = self.config
        if not self.load_state():
            self.check_budgets()
            initial = self._initial_population()
            self.reference_ms = statistics.median(self.latency_of(a) for a in initial)
            self.population = [a.hash for a in initial]
            self._evaluate(initial)
            self.generation = 1
            self._after_generation()
        while self.generation < cfg.generations:
            parents = self.ranked(self.population)[: breeding_parents(cfg.population, cfg.parents)]
            taken = set(self.cache) | {p.arch.hash for p in parents}
            children = self._children(parents, cfg.population - len(parents), taken)
            self._evaluate(children)
            self.population = [p.arch.hash for p in parents] + [c.hash for c in children]
            self.generation += 1
            self._after_generation()
        return self.ranked()[0]

    def _after_generation(self) -> None:
        self.save_state()
        if self.cb.on_generation:
            self.cb.on_generation(self.generation, self.ranked(self.population))

    def finalize(self, top: int = 5, latency_tolerance: float = 0.0) -> Candidate:
        """Measure the top candidates and the Pareto front end to end; choose by measured score.

        Predicted 200 ms that measures 270 ms is a known failure of predictor-only searches,
        so the final choice never rests on the estimate alone when the target can measure.
        Latencies within `latency_tolerance` (relative) of the best-scoring finalist's cannot
        be told apart on a real device: among those finalists, accuracy decides. The choice
        and why are in ``chosen.extra["decision"]``.
        """
        finalists = {c.arch.hash: c for c in self.ranked()[:top]}
        finalists.update({c.arch.hash: c for c in pareto_front(list(self.cache.values()))})
        todo = [c for c in finalists.values() if c.measured_ms is None]
        if self.cb.measure_ms is not None and todo:
            for cand, ms in zip(todo, self.cb.measure_ms([c.arch for c in todo]), strict=True):
                cand.measured_ms = float(ms)
            self.save_state()
        budget = self.config.latency_budget_ms
        eligible = [c for c in finalists.values() if budget is None or final_ms(c) <= budget]
        if not eligible:
            raise SearchError(
                f"every finalist measured over the latency budget of {budget:g} ms end to end"
            )
        ranked = sorted(eligible, key=lambda c: (-self.score(c, use_measured=True), c.arch.hash))
        by_score = ranked[0]
        ties = [c for c in ranked if latency_tie(final_ms(c), final_ms(by_score), latency_tolerance)]
        chosen = max(ties, key=lambda c: c.miou)  # the first of equals in score order
        chosen.extra["decision"] = {
            "by": "score" if chosen is by_score else "accuracy among latency ties",
            "latency_tolerance": latency_tolerance,
            "ties": [c.arch.hash for c in ties],
            "best_score": by_score.arch.hash,
        }
        return chosen

    # ---- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 1,
            "config": asdict(self.config),
            "space": self.space.to_dict(),
            "generation": self.generation,
            "reference_ms": self.reference_ms,
            "population": self.population,
            "rng": _rng_state_to_json(self.rng.getstate()),
            "candidates": [c.to_dict() for c in self.cache.values()],
            "latency_ms": self._latency,
            "params": self._params,
        }

    def save_state(self) -> None:
        if self.state_path is not None:
            atomic_write_json(self.state_path, self.state_dict())

    def load_state(self) -> bool:
        if self.state_path is None or not self.state_path.exists():
            return False
        path = self.state_path

        def unreadable(why: object) -> SearchError:  # a hand edit, a torn copy
            return SearchError(f"{path}: unreadable ({' '.join(str(why).split())}); "
                               "delete it to redo the search, or use another --out")

        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError(f"a JSON {type(state).__name__}, not an object")
            saved_space = SearchSpace.from_dict(state["space"]) if state.get("space") is not None else None
            saved_config = state.get("config", {})
            if not isinstance(saved_config, dict):
                raise ValueError("its config is not an object")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise unreadable(exc) from None
        # Its candidates and their scores belong to that space (the settings below do not name it).
        if saved_space is not None and saved_space != self.space:
            raise SearchError(f"{path}: the search ran in another search space; start it in a new --out")
        # Everything but the number of generations must match: a finished search may be extended.
        saved = {k: v for k, v in saved_config.items() if k != "generations"}
        current = {k: v for k, v in json.loads(json.dumps(asdict(self.config))).items() if k != "generations"}
        if saved != current:
            raise SearchError(
                f"{self.state_path} was written by a search with other settings; "
                "use a new output directory or the same settings"
            )
        try:
            generation, reference_ms = int(state["generation"]), state["reference_ms"]
            population = list(state["population"])
            rng = _rng_state_from_json(state["rng"])
            cache = {c["hash"]: Candidate.from_dict(c) for c in state["candidates"]}
            latency = {k: float(v) for k, v in state["latency_ms"].items()}
            params = {k: int(v) for k, v in state["params"].items()}
            self.rng.setstate(rng)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise unreadable(f"{type(exc).__name__} {exc}") from None
        self.generation, self.reference_ms, self.population = generation, reference_ms, population
        self.cache, self._latency, self._params = cache, latency, params
        return True
