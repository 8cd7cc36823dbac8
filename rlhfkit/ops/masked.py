"""Masked reductions over token positions. Pure torch.

Convention (house style): bool masks named ``*_mask``, True = the position counts.
Tests: tests/ops/test_masked.py.
"""
from __future__ import annotations

import torch


def zero_outside_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask`` is True, 0 elsewhere; same shape.

    ``torch.where``, not ``values * mask``: 0·NaN and 0·inf are NaN, in the forward and in the
    backward, so garbage at padding would leak (test_zero_outside_mask_blocks_nan_in_the_gradient).
    """
    return torch.where(mask, values, torch.zeros_like(values))


def masked_log_ratio(logprobs: torch.Tensor, other_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """log π − log π_other where ``mask`` is True, 0 elsewhere. (B, T).

    Each side is zeroed before the subtraction, so NaN/inf at padding never meets arithmetic.
    """
    return zero_outside_mask(logprobs, mask) - zero_outside_mask(other_logprobs, mask)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is True (over all elements, or along ``dim``)."""
    kept = zero_outside_mask(values, mask)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is True.

    A row (or whole tensor) with no True position gives 0, not NaN.
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked positions (Bessel-corrected when ``unbiased`` and count > 1)."""
    mean = masked_mean(values, mask)
    sq = masked_sum((values - mean) ** 2, mask)
    count = mask.sum().to(values.dtype)
    if unbiased:
        count = torch.where(count > 1, count - 1, count)
    return sq / count.clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(values − mean) / sqrt(var + eps) with statistics over masked positions only.

    ``shift_mean=False`` keeps the original mean (only rescales), as used for rewards.
    Masked-out positions are returned as 0.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zero_outside_mask(whitened, mask)
