"""Weight-space interpolation (WARP's LITI, Ramé et al. 2024, "WARP: On the Benefits of Weight
Averaged Rewarded Policies", §3.3): θ_init + η·(θ − θ_init), the trained policy moved back
towards its initialisation. Pure torch. Tests: tests/ops/test_weights.py.
"""
from __future__ import annotations

import torch


def interpolate(start: torch.Tensor, end: torch.Tensor, eta: float) -> torch.Tensor:
    """start + η·(end − start): η = 0 gives ``start``, η = 1 ``end``. Any shapes that
    broadcast; the result has ``end``'s dtype."""
    return (start.to(end.dtype) + eta * (end - start.to(end.dtype))).to(end.dtype)
