"""Ratings from pairwise games: Bradley–Terry strengths on the Elo scale. Pure functions, no Django.

A game is `(a, b, score)`: `score` is a's result, 1 (a won), 0 (b won) or 0.5 (a tie,
which counts as half a win for each side). Bradley–Terry says a beats b with
probability p_a / (p_a + p_b); the strengths are fitted by Zermelo's iteration, the
MM algorithm of Hunter (2004, "MM algorithms for generalized Bradley-Terry models"):

    p_i <- W_i / sum_j n_ij / (p_i + p_j)        (W_i: i's wins, n_ij: games of i against j)

A prior keeps the fit finite and anchors the scale: every player also plays `prior`
virtual tied games against a fixed reference player of strength 1. Without it a player
who won every game would have an infinite strength (and one who lost every game zero);
with it such a player ranks first with a finite rating, and players with few games stay
near the reference. Elo = 1000 + 400 * log10(p): the reference is 1000, and a 400-point
gap means 10:1 odds.

The 95% interval is a bootstrap: the games are resampled with replacement (a seeded RNG,
so the page shows the same numbers twice) and refitted; the 2.5th and 97.5th percentiles
of each player's Elo are the interval.
"""

import math
import random
from dataclasses import dataclass

REFERENCE_ELO = 1000.0
ELO_SCALE = 400.0


@dataclass(frozen=True)
class Rating:
    player: str
    elo: float
    games: int
    wins: int
    losses: int
    ties: int
    low: float | None = None  # bootstrap 95% interval of `elo`
    high: float | None = None


def elo(strength):
    return REFERENCE_ELO + ELO_SCALE * math.log10(strength)


def strengths(games, prior=1.0, iterations=10_000, tolerance=1e-10):
    """{player: Bradley–Terry strength} fitted to `games` (see the module docstring)."""
    if prior <= 0:
        raise ValueError("the prior must be positive: without it an unbeaten player's strength is infinite")
    players = sorted({player for a, b, _ in games for player in (a, b)})
    index = {player: i for i, player in enumerate(players)}
    wins = [prior / 2] * len(players)  # half of each virtual tie with the reference player
    pairs = {}
    for a, b, score in games:
        _check(a, b, score)
        i, j = index[a], index[b]
        wins[i] += score
        wins[j] += 1 - score
        pairs[min(i, j), max(i, j)] = pairs.get((min(i, j), max(i, j)), 0) + 1
    p = [1.0] * len(players)
    for _ in range(iterations):
        denominator = [prior / (strength + 1.0) for strength in p]
        for (i, j), count in pairs.items():
            share = count / (p[i] + p[j])
            denominator[i] += share
            denominator[j] += share
        new = [w / d for w, d in zip(wins, denominator)]
        change = max((abs(math.log(n / old)) for n, old in zip(new, p)), default=0.0)
        p = new
        if change < tolerance:
            break
    return dict(zip(players, p))


def _check(a, b, score):
    if a == b:
        raise ValueError(f"{a!r} cannot play against itself")
    if score not in (0, 0.5, 1):
        raise ValueError(f"a game's score is 1, 0 or 0.5, not {score!r}")


def table(games, resamples=100, seed=0, prior=1.0):
    """Every player's Rating (Elo, counts, bootstrap interval), best first."""
    games = list(games)
    fitted = strengths(games, prior)
    counts = _counts(games)
    intervals = _bootstrap(games, fitted, resamples, seed, prior)
    rows = [
        Rating(player, elo(strength), **counts[player], **intervals.get(player, {}))
        for player, strength in fitted.items()
    ]
    return sorted(rows, key=lambda row: (-row.elo, row.player))


def _counts(games):
    counts = {}
    for a, b, score in games:
        for player, result in ((a, score), (b, 1 - score)):
            row = counts.setdefault(player, {"games": 0, "wins": 0, "losses": 0, "ties": 0})
            row["games"] += 1
            row["wins" if result == 1 else "losses" if result == 0 else "ties"] += 1
    return counts


def _bootstrap(games, players, resamples, seed, prior):
    """{player: {"low", "high"}}: percentiles of the Elo refitted on resampled games."""
    if not games or resamples <= 0:
        return {}
    rng = random.Random(seed)
    samples = {player: [] for player in players}
    for _ in range(resamples):
        fitted = strengths([games[rng.randrange(len(games))] for _ in games], prior)
        for player, values in samples.items():
            values.append(elo(fitted.get(player, 1.0)))  # absent from this resample: only the prior
    return {
        player: {"low": _percentile(values, 0.025), "high": _percentile(values, 0.975)}
        for player, values in samples.items()
    }


def _percentile(values, fraction):
    ordered = sorted(values)
    return ordered[round(fraction * (len(ordered) - 1))]
