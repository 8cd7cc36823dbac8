"""The simulated annotator's noise (issue #14): a judge's scores → the ranking a noisy person gives.

A judge (any reward source) scores the K candidates of a task, ``scores`` (B, K). Two noise
models, used alone or together:

- Bradley–Terry with a temperature T (its K-way form, Plackett–Luce): rank by
  s/T + Gumbel noise. By the Gumbel-max trick the first place is drawn with P(i) =
  softmax(s/T)_i, the second among the rest alike, and so on; for K = 2,
  P(a ≻ b) = σ((s_a − s_b)/T), Bradley–Terry's preference probability. T = 0: no noise
  (equal scores stay tied).
- A flip probability p: with probability p the whole ranking comes back reversed (an annotator
  who mixed up best and worst; for K = 2, a flipped pair).
Together, for K = 2: P(a ≻ b) = (1 − p)·σ(Δ/T) + p·(1 − σ(Δ/T)) (``preference_probability``).

Ranks follow the label store's convention: 1 = best, equal numbers = tie (competition ranking:
scores (3, 3, 1) → ranks (1, 1, 3)). Tests: tests/ops/test_noise.py (hand values and sampled
frequencies against these formulas).
"""
from __future__ import annotations

import torch


def competition_ranks(scores: torch.Tensor) -> torch.Tensor:
    """(B, K) scores → (B, K) long ranks: 1 + the number of candidates scored strictly higher
    (1 = best; equal scores share a rank)."""
    higher = scores.unsqueeze(-2) > scores.unsqueeze(-1)  # (B, K, K): [b, i, j] = s_j > s_i
    return 1 + higher.sum(-1)


def gumbel(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise −log(−log U), U uniform in (0, 1)."""
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
    uniform = uniform.clamp(torch.finfo(torch.float64).tiny, 1.0 - 1e-16)
    return -torch.log(-torch.log(uniform))


def noisy_ranks(scores: torch.Tensor, temperature: float = 0.0, flip_prob: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, K) judge scores → (B, K) ranks of a noisy annotator (module docstring): Plackett–Luce
    at ``temperature`` (0 = the judge's own order, ties kept), then the whole ranking reversed
    with probability ``flip_prob``. Noise is drawn from ``generator`` (Gumbel first, then the
    flips), so a seeded generator gives the same ranks again."""
    scores = scores.to(torch.float64)
    noisy = scores if temperature == 0 else scores / temperature + gumbel(scores.shape, generator)
    ranks = competition_ranks(noisy)
    if flip_prob > 0:
        flip = torch.rand(scores.shape[:-1], generator=generator, dtype=torch.float64) < flip_prob
        ranks = torch.where(flip.unsqueeze(-1), competition_ranks(-noisy), ranks)
    return ranks


def preference_probability(gap: torch.Tensor, temperature: float = 0.0,
                           flip_prob: float = 0.0) -> torch.Tensor:
    """P(a ≻ b) for a pair whose judge scores differ by ``gap`` = s_a − s_b (any shape):
    (1 − p)·σ(gap/T) + p·(1 − σ(gap/T)); T = 0: 1, ½ or 0 by the sign of the gap."""
    gap = torch.as_tensor(gap, dtype=torch.float64)
    clean = torch.sigmoid(gap / temperature) if temperature > 0 else (torch.sign(gap) + 1) / 2
    return (1 - flip_prob) * clean + flip_prob * (1 - clean)
