"""Leaderboard math: Bradley–Terry ratings on the Elo scale from pairwise comparisons, with
intervals from a bootstrap over judgments (Chatbot Arena's method: Chiang et al. 2024, "Chatbot
Arena: An Open Platform for Evaluating LLMs by Human Preference", §4–5). Pure torch and python.

A comparison is ``(model_a, model_b, score_a)``: score_a = 1 when a was preferred, 0 when b was,
½ for a tie. A ranking of K candidates gives its C(K, 2) comparisons (``ranking_pairs``).

Bradley–Terry (1952): P(a ≻ b) = σ(θ_a − θ_b), one log-strength θ per model. The fit minimises

    Σ_c −[s_c·log σ(θ_a − θ_b) + (1 − s_c)·log σ(θ_b − θ_a)] + λ/2·Σ_m θ_m²

— the logistic regression Chatbot Arena fits, with a tie counted as half a win and half a loss.
Ratings on the Elo scale: R_m = base + scale·log10(e)·θ_m, so a gap of ``scale`` (400) points is
10:1 odds and 3:1 odds is 400·log10 3 ≈ 190.8; the mean rating is ``base`` (1000). The
likelihood does not change when every θ moves by the same amount; the optimum of the whole
objective has Σθ = 0 (the likelihood's gradient sums to zero over the models), which is the
anchor.

λ (``l2``, default 0.01, a Gaussian prior of standard deviation 10 nats ≈ 1,737 Elo on each θ):
without it a model that won (or lost) every comparison has no finite MLE, and models in
separate components of the comparison graph have no common scale. With λ = 0.01 a perfect record
of 3 wins puts the winner 837 points ahead, of 300 wins 1,533 (growing like log n, not without
bound), and a fit with data moves by little: 3 wins to 1 gives 189.59 points instead of 190.85,
the same odds over 400 comparisons 190.84 (λ weighs against the Fisher information n·p·(1 − p)).
``l2=0`` is the plain MLE (the hand-value tests), defined when the comparison graph is connected
and no model has a perfect record. A model with no comparisons at all (in ``models=``, or
missing from a bootstrap resample) is pinned at the mean by one more unit of penalty.

Fit: Newton's method on the M log-strengths (the objective is convex; its Hessian is the
comparison graph's Laplacian weighted by n·p·(1 − p), + λ·I, + 1·1ᵀ, which only fixes the
shift the likelihood leaves free) with a backtracking (Armijo) line search, in float64, for
many bootstrap resamples at once (R, M, M). Unlike the training ops these return python
floats (a table for people and reports), computed on the CPU.

Bootstrap: the J judgments are resampled with replacement (the C(K, 2) pairs of one ranking
stay together: they came from one person's one look at one task, so they are not independent),
each resample refitted, and the interval is the (1 − level)/2 and (1 + level)/2 quantiles of a
model's ratings over the resamples it appears in.
Tests: tests/ops/test_leaderboard_ops.py.
"""
from __future__ import annotations

import math
from itertools import combinations

import torch
import torch.nn.functional as F

Comparison = tuple[str, str, float]  # (model_a, model_b, score of a: 1 win, ½ tie, 0 loss)

L2 = 0.01
ELO_PER_NAT = 1 / math.log(10)  # × scale: Elo points per unit of θ
MAX_RESAMPLE_CELLS = 10_000_000  # resamples × judgments drawn at once (memory bound)


def ranking_pairs(ranks: list[int], models: list[str]) -> list[Comparison]:
    """A ranking (1 = best, equal = tie) of K candidates written by ``models`` → its C(K, 2)
    comparisons (i < j in candidate order); pairs of two candidates of the same model say
    nothing about models and are dropped."""
    if len(ranks) != len(models):
        raise ValueError(f"{len(ranks)} ranks for {len(models)} models")
    pairs = []
    for i, j in combinations(range(len(ranks)), 2):
        if models[i] != models[j]:
            score = 1.0 if ranks[i] < ranks[j] else 0.0 if ranks[i] > ranks[j] else 0.5
            pairs.append((models[i], models[j], score))
    return pairs


def _models_of(groups: list[list[Comparison]], models: list[str] | None) -> list[str]:
    seen = sorted({m for group in groups for a, b, _ in group for m in (a, b)})
    if models is None:
        return seen
    unknown = sorted(set(seen) - set(models))
    if unknown:
        raise ValueError(f"comparisons name models not in models=: {unknown}")
    return list(models)


def _tables(groups: list[list[Comparison]], models: list[str]) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Per judgment: games[j, a, b] = comparisons listing a first, wins[j, a, b] = a's score in
    them; both (J, M, M) float64."""
    index = {m: i for i, m in enumerate(models)}
    rows, cols, judgment, score = [], [], [], []
    for j, group in enumerate(groups):
        for a, b, s in group:
            if a == b:
                raise ValueError(f"comparison of {a!r} with itself")
            if s not in (0, 0.5, 1):
                raise ValueError(f"score {s!r} of {a!r} vs {b!r}: expected 1, 0.5 or 0")
            rows.append(index[a])
            cols.append(index[b])
            judgment.append(j)
            score.append(float(s))
    shape = (len(groups), len(models), len(models))
    at = (torch.tensor(judgment, dtype=torch.long), torch.tensor(rows, dtype=torch.long),
          torch.tensor(cols, dtype=torch.long))
    games = torch.zeros(shape, dtype=torch.float64).index_put_(
        at, torch.ones(len(score), dtype=torch.float64), accumulate=True)
    wins = torch.zeros(shape, dtype=torch.float64).index_put_(
        at, torch.tensor(score, dtype=torch.float64), accumulate=True)
    return games, wins


def fit_log_strengths(games: torch.Tensor, wins: torch.Tensor, l2: float = L2,
                      iters: int = 100) -> torch.Tensor:
    """Bradley–Terry log-strengths θ (R, M), Σ_m θ = 0, of R independent tables: games/wins
    (R, M, M) as ``_tables`` sums them. Newton with a backtracking line search (module doc)."""
    r, m, _ = games.shape
    played = (games.sum(2) + games.sum(1)) > 0  # (R, M)
    penalty = l2 + (~played).to(games.dtype)  # a model without games is pinned at the mean
    ones = torch.ones(m, m, dtype=games.dtype)
    losses = games - wins
    tol = 1e-10 * (1 + float(games.sum((1, 2)).max()))

    def objective(theta):  # (R,)
        d = theta[:, :, None] - theta[:, None, :]  # (R, M, M) θ_a − θ_b
        nll = (wins * F.softplus(-d) + losses * F.softplus(d)).sum((1, 2))
        return nll + 0.5 * (penalty * theta ** 2).sum(1) + 0.5 * theta.sum(1) ** 2

    theta = torch.zeros(r, m, dtype=games.dtype)
    for _ in range(iters):
        p = torch.sigmoid(theta[:, :, None] - theta[:, None, :])  # (R, M, M) P(a ≻ b)
        g = games * p - wins  # ∂nll/∂(θ_a − θ_b)
        grad = g.sum(2) - g.sum(1) + penalty * theta + theta.sum(1, keepdim=True)
        if grad.abs().max() <= tol:
            break
        h = games * p * (1 - p)
        h = h + h.transpose(1, 2)
        hess = torch.diag_embed(h.sum(2) + penalty) - h + ones  # (R, M, M)
        step = torch.linalg.solve(hess, grad)
        before, decrease = objective(theta), (grad * step).sum(1)
        t = torch.ones(r, dtype=games.dtype)
        for _ in range(40):
            ok = objective(theta - t[:, None] * step) <= (
                before - 1e-4 * t * decrease + 1e-13 * before.abs())
            if ok.all():
                break
            t = torch.where(ok, t, t / 2)
        theta = theta - t[:, None] * step
    return theta - theta.mean(1, keepdim=True)


def _to_elo(theta: torch.Tensor, scale: float, base: float) -> torch.Tensor:
    return base + scale * ELO_PER_NAT * theta


def bradley_terry(comparisons: list[Comparison], models: list[str] | None = None,
                  iters: int = 100, scale: float = 400.0, base: float = 1000.0,
                  l2: float = L2) -> dict[str, float]:
    """Elo-scale Bradley–Terry ratings {model: rating} (mean ``base``) of the models in
    ``comparisons`` (or of ``models``, which must include every one they name)."""
    names = _models_of([comparisons], models)
    if not names:
        return {}
    games, wins = _tables([comparisons], names)
    elo = _to_elo(fit_log_strengths(games, wins, l2, iters)[0], scale, base)
    return dict(zip(names, elo.tolist()))


def _resample_weights(n_judgments: int, n: int, seed: int):
    """Bootstrap weights (chunk, J): how often each judgment is drawn, chunks of the n
    resamples (J draws with replacement each), reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, MAX_RESAMPLE_CELLS // max(n_judgments, 1))
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        drawn = torch.randint(n_judgments, (size, n_judgments), generator=generator)
        yield torch.zeros(size, n_judgments, dtype=torch.float64).scatter_add_(
            1, drawn, torch.ones(size, n_judgments, dtype=torch.float64))


def _quantiles(values: torch.Tensor, level: float) -> tuple[float, float]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype)
    lo, hi = torch.quantile(values, q).tolist()
    return lo, hi


def _check_bootstrap(n: int, level: float) -> None:
    if n < 1:
        raise ValueError(f"n={n}: expected at least one bootstrap resample")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: expected a number in (0, 1)")


def bootstrap_intervals(comparisons: list[list[Comparison]], n: int = 1000, seed: int = 0,
                        level: float = 0.95, *, iters: int = 100, scale: float = 400.0,
                        base: float = 1000.0, l2: float = L2
                        ) -> dict[str, tuple[float, float]]:
    """{model: (lo, hi)}: the ``level`` interval of each model's Elo rating over ``n`` resamples
    of the judgments; ``comparisons`` holds one list of comparisons per judgment."""
    _check_bootstrap(n, level)
    names = _models_of(comparisons, None)
    if not names:
        return {}
    games, wins = _tables(comparisons, names)
    flat_games, flat_wins = games.flatten(1), wins.flatten(1)  # (J, M·M)
    shape = (-1, len(names), len(names))
    ratings, present = [], []
    for weights in _resample_weights(len(comparisons), n, seed):
        g, w = (weights @ flat_games).view(shape), (weights @ flat_wins).view(shape)
        ratings.append(_to_elo(fit_log_strengths(g, w, l2, iters), scale, base))
        present.append((g.sum(2) + g.sum(1)) > 0)
    ratings, present = torch.cat(ratings), torch.cat(present)  # (n, M)
    return {name: _quantiles(ratings[present[:, i], i], level)
            for i, name in enumerate(names) if present[:, i].any()}


def win_rate(comparisons: list[list[Comparison]], a: str, b: str, n: int = 1000, seed: int = 0,
             level: float = 0.95) -> tuple[float, float, float]:
    """(rate, lo, hi): the share of a-vs-b comparisons a won (ties half), with the ``level``
    bootstrap interval over judgments (resamples without an a-vs-b comparison are left out).
    ValueError when no comparison puts a against b."""
    _check_bootstrap(n, level)
    won, count = [], []  # per judgment: a's score and the number of a-vs-b comparisons
    for group in comparisons:
        won.append(sum(s if x == a else 1 - s for x, y, s in group if {x, y} == {a, b}))
        count.append(sum(1 for x, y, _ in group if {x, y} == {a, b}))
    won_t = torch.tensor(won, dtype=torch.float64)
    count_t = torch.tensor(count, dtype=torch.float64)
    if a == b or count_t.sum() == 0:
        raise ValueError(f"no comparison of {a!r} with {b!r}")
    rates = []
    for weights in _resample_weights(len(comparisons), n, seed):
        w_count = weights @ count_t
        rates.append((weights @ won_t)[w_count > 0] / w_count[w_count > 0])
    lo, hi = _quantiles(torch.cat(rates), level)
    return float(won_t.sum() / count_t.sum()), lo, hi
