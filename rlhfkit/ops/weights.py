"""Weight space: interpolation (WARP's LITI, Ramé et al. 2024, "WARP: On the Benefits of Weight
Averaged Rewarded Policies", §3.3): θ_init + η·(θ − θ_init), the trained policy moved back
towards its initialisation; and the average of low-rank weight changes (the iterates of one
run, Polyak–Ruppert averaging) as one low-rank factor pair. Pure torch.
Tests: tests/ops/test_weights.py.
"""
from __future__ import annotations

import torch


def interpolate(start: torch.Tensor, end: torch.Tensor, eta: float) -> torch.Tensor:
    """start + η·(end − start): η = 0 gives ``start``, η = 1 ``end``. Any shapes that
    broadcast; the result has ``end``'s dtype."""
    return (start.to(end.dtype) + eta * (end - start.to(end.dtype))).to(end.dtype)


def mean_of_products(a_factors: list[torch.Tensor],
                     b_factors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A = mean_k B_k @ A_k exactly: LoRA weight changes B_k (out, r) @ A_k
    (r, in) averaged as one pair of rank n·r — A the A_k stacked (n·r, in), B the B_k side by
    side and divided by n (out, n·r). Averaging the A's and the B's apart is not the same
    (its cross terms shrink the change)."""
    n = len(a_factors)
    return torch.cat(a_factors, dim=0), torch.cat(b_factors, dim=1) / n
