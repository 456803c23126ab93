"""The race: when the search cannot see accuracy, a few candidates are trained briefly and
compared on how fast they learn.

A supernet trained for minutes scores its subnets within the val split's noise (on Magnetic-tile
60 candidates spread 0.3 points against a noise of 1.5), so ``mIoU - lambda * latency`` is decided
by latency alone and the fastest subnet wins, whether or not it can learn the data: on
Magnetic-tile the transformer-only subnet the search chose reached 35.6 % test mIoU where a mixed
MLP/conv one reached 60.4 % by the same recipe and steps (benchmarks/RESULTS.md, session 12).

Val mIoU does not tell them apart early either (25.2 and 26.2 % after 2,030 steps from scratch),
but their training loss does, from the first hundred steps on: on the same batches the mixed
subnet's loss was lower at every epoch, by 2 % after 700 steps and 6 % after 2,000. That is the
race's measure, the training-speed estimate of Ru et al. ("Speedy Performance Estimation for
Neural Architecture Search", NeurIPS 2021): the mean training loss over the second half of a short
training from scratch, every entrant on the same seeded batches.

The race takes `count` entrants spread over the candidates' latencies (the search's choice, then
each next the farthest in latency rank from those in: accuracy is bought with latency, so the
spread is where a better learner can be), trains each for the same steps and scores them with
the search's formula, the loss relative to the entrants' median in place of the accuracy::

    score = -loss / median(loss) - lambda * latency / reference_latency

so with lambda = 0.1 a subnet twice as slow must fit its training crops 10 % better to win::

    entrants = pick_entrants(candidates, chosen, count=4)
    ...                                   # each trained for the same steps (stages.race)
    entries = score_entries(results, latency_weight, reference_ms)
    winner = race_winner(entries)

This module is torch-free; `search.stages.race` runs it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

from autonad_edge.search.evolution import Candidate, final_ms


def pick_entrants(candidates: Sequence[Candidate], chosen: Candidate, count: int) -> list[Candidate]:
    """`count` distinct candidates spread over latency, fastest first: the search's `chosen`
    one, then each next the farthest in latency rank from those already in (so the fastest and
    the slowest come early; ties to the faster). Deterministic; fewer when there are fewer
    candidates."""
    by_latency = sorted({c.arch.hash: c for c in [*candidates, chosen]}.values(),
                        key=lambda c: (final_ms(c), c.arch.hash))
    ranks = {c.arch.hash: r for r, c in enumerate(by_latency)}
    taken = [ranks[chosen.arch.hash]]
    while len(taken) < min(max(count, 1), len(by_latency)):
        free = (r for r in range(len(by_latency)) if r not in taken)
        taken.append(max(free, key=lambda r: (min(abs(r - t) for t in taken), -r)))
    return [by_latency[r] for r in sorted(taken)]


@dataclass(frozen=True)
class RaceEntry:
    """One entrant: its inherited val mIoU (the search's score) and what the race measured."""

    hash: str
    summary: str
    latency_ms: float  # measured end to end where it was, else estimated
    inherited_miou: float
    train_loss: float  # mean training loss over the second half of the race
    raced_miou: float  # calibrated val mIoU at the end of the race (reported, not scored: too noisy)
    score: float  # -train_loss / median entrant loss - lambda * latency_ms / reference_ms

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RaceEntry":
        return cls(**d)


@dataclass(frozen=True)
class RaceRun:
    """What training one entrant measured: its training loss per epoch over the race's second
    half, and its val mIoU at the end."""

    candidate: Candidate
    epoch_losses: tuple[float, ...]
    raced_miou: float
    steps: int = 0  # optimiser steps it was trained for

    @property
    def train_loss(self) -> float:
        return statistics.fmean(self.epoch_losses)


def evidence(winner: RaceRun, other: RaceRun) -> str:
    """How clearly `winner` learned faster than `other` (on the same batches), in one line."""
    lower = sum(w < o for w, o in zip(winner.epoch_losses, other.epoch_losses))
    change = winner.train_loss / other.train_loss - 1
    return (f"training loss {winner.train_loss:.4f} against {other.train_loss:.4f} ({100 * change:+.1f} %), "
            f"lower in {lower} of {min(len(winner.epoch_losses), len(other.epoch_losses))} epochs of the second half")


def score_entries(runs: Sequence[RaceRun], latency_weight: float, reference_ms: float) -> list[RaceEntry]:
    """The entrants' records with their race scores (the loss relative to the median entrant's).
    An entrant whose training diverged (a loss that is not finite) scores -inf: a NaN would make
    every score NaN through the median, and the fastest entrant win whatever it learnt."""
    finite = [r.train_loss for r in runs if math.isfinite(r.train_loss)]
    median = statistics.median(finite) if finite else 1.0
    entries = []
    for r in runs:
        ms = final_ms(r.candidate)
        score = (-r.train_loss / (median or 1.0) - latency_weight * ms / (reference_ms or 1.0)
                 if math.isfinite(r.train_loss) else -math.inf)
        entries.append(RaceEntry(r.candidate.arch.hash, r.candidate.arch.summary(), ms, r.candidate.miou,
                                 r.train_loss, r.raced_miou, score))
    return entries


def race_winner(entries: Sequence[RaceEntry]) -> RaceEntry:
    """The best score (ties: the faster, then by hash)."""
    if not entries:
        raise ValueError("a race needs at least one entrant")
    return min(entries, key=lambda e: (-e.score, e.latency_ms, e.hash))


__all__ = ["RaceEntry", "RaceRun", "evidence", "pick_entrants", "race_winner", "score_entries"]
