"""Reward-model ranking loss over lists ranked best → worst. Pure torch.

For one list y_1 ≻ y_2 ≻ … ≻ y_K with scalar rewards r_1 … r_K (InstructGPT, Ouyang et al.
2022, eq. 1):

    loss = −1/C(K,2) · Σ_{i<j} log σ(r_i − r_j − m)

with an optional margin m (Llama 2, Touvron et al. 2023, eq. 2) and an optional centering
penalty coef · mean(r²) that pins the reward's free additive constant near 0 (Eisenstein et
al. 2023, "Helping or Herding?", §3). K = 2 is the Bradley–Terry pairwise loss.

A batch holds lists of different lengths padded to K: ``list_mask`` (B, K) is True where a
rank slot exists (valid slots are a prefix; column 0 is the best answer). Ties: optional
``ranks`` (B, K), non-decreasing along a list (1 = best, equal = tie, as people rank in
``rlhfkit label``); a tied pair carries no preference and is skipped, so C(K,2) becomes the
number of strictly ordered pairs of the list. Padding never
reaches the arithmetic (``torch.where``, not multiplication), so NaN/inf at padded slots
cannot leak into the loss or its gradient.
Also the math of the loop's ``selection: ensemble`` (rlhfkit/loop/selection.py): the binary
entropy, BALD over a task's candidate pairs (``pair_disagreement``) and a linear score head
fitted by this loss on fixed features (``fit_head``).
Tests: tests/ops/test_ranking.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhfkit.ops.masked import masked_mean, masked_sum


class RankingLossOutput(NamedTuple):
    loss: torch.Tensor  # () list-weighted ranking loss (+ centering term)
    pair_accuracy: torch.Tensor  # () share of valid i<j pairs with r_i > r_j (pair-weighted)
    mean_margin: torch.Tensor  # () mean of r_i − r_j over valid pairs (pair-weighted)
    num_pairs: torch.Tensor  # () int64, number of valid i<j pairs in the batch


def ranked_pair_mask(list_mask: torch.Tensor) -> torch.Tensor:
    """(B, K) slot mask → (B, K, K) mask, True at [b, i, j] when i < j and both slots exist."""
    k = list_mask.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=list_mask.device).triu(1)  # (K, K) i < j
    return upper & list_mask[:, :, None] & list_mask[:, None, :]


def ranking_loss(rewards: torch.Tensor, list_mask: torch.Tensor,
                 margin: float | torch.Tensor = 0.0, center_coef: float = 0.0,
                 ranks: torch.Tensor | None = None) -> RankingLossOutput:
    """Ranking loss for rewards (B, K), column 0 = best, ``list_mask`` (B, K) bool.

    Each list b is first averaged over its own C(K_b, 2) pairs, then lists are averaged with
    equal weight (a 4-answer list does not outweigh a 2-answer one six to one). Lists with
    fewer than two slots have no pair and are left out of that average. ``margin`` is a float
    or a per-list (B,) tensor, subtracted inside the sigmoid. ``center_coef`` adds
    center_coef · mean(r²) over all valid slots of the batch. log σ is computed with
    ``logsigmoid``, so a gap of ±1000 gives 0 / 2000, never inf/NaN. The metrics are detached
    and pooled over all valid pairs of the batch. ``ranks`` (B, K) int: only pairs with
    ranks[i] < ranks[j] count (ties skipped); a list whose slots all tie has no pair.
    """
    list_mask = list_mask.bool()
    safe = torch.where(list_mask, rewards, torch.zeros_like(rewards))  # (B, K) padding → 0
    pair_mask = ranked_pair_mask(list_mask)  # (B, K, K)
    if ranks is not None:
        pair_mask = pair_mask & (ranks[:, :, None] < ranks[:, None, :])  # tied pairs out
    diff = safe[:, :, None] - safe[:, None, :]  # (B, K, K) r_i − r_j
    margin = torch.as_tensor(margin, dtype=rewards.dtype, device=rewards.device)
    margin = margin.reshape(-1, 1, 1) if margin.ndim else margin  # (B,) → (B, 1, 1)
    nll = -F.logsigmoid(diff - margin)  # (B, K, K)
    pairs_per_list = pair_mask.sum((1, 2))  # (B,) = C(K_b, 2)
    per_list = masked_sum(nll, pair_mask, dim=(1, 2)) / pairs_per_list.clamp(min=1)  # (B,)
    loss = masked_mean(per_list, pairs_per_list > 0)
    if center_coef:
        loss = loss + center_coef * masked_mean(safe ** 2, list_mask)
    diff = diff.detach()
    return RankingLossOutput(
        loss=loss,
        pair_accuracy=masked_mean((diff > 0).to(rewards.dtype), pair_mask),
        mean_margin=masked_mean(diff, pair_mask),
        num_pairs=pair_mask.sum(),
    )


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                  margin: float | torch.Tensor = 0.0) -> RankingLossOutput:
    """Bradley–Terry loss −mean log σ(r_chosen − r_rejected − margin): ``ranking_loss`` at K = 2."""
    return ranking_loss(torch.stack([chosen, rejected], dim=1),
                        torch.ones(chosen.shape[0], 2, dtype=torch.bool, device=chosen.device), margin)


# ----------------------------------------------------------------------------- selection: ensemble
def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −p log p − (1 − p) log(1 − p) in nats, elementwise; H(0) = H(1) = 0."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def pair_disagreement(scores: torch.Tensor) -> torch.Tensor:
    """BALD summed over a task's pairs: scores (M, K) of M members for K candidates → ()
    Σ_{i<j} [H(p̄_ij) − mean_m H(p_m,ij)], p_m,ij = σ(s_m,i − s_m,j), p̄_ij = mean_m p_m,ij.
    ≥ 0 (H is concave); 0 when the members agree, however unsure each is.
    tests/ops/test_ranking.py::test_pair_disagreement_by_hand."""
    k = scores.shape[-1]
    p = torch.sigmoid(scores[:, :, None] - scores[:, None, :])  # (M, K, K)
    bald = binary_entropy(p.mean(0)) - binary_entropy(p).mean(0)  # (K, K)
    upper = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)
    return bald[upper].sum()


def fit_head(features: torch.Tensor, list_mask: torch.Tensor, ranks: torch.Tensor,
             prior: torch.Tensor, l2: float, max_iter: int = 100) -> torch.Tensor:
    """A linear score head on fixed features: argmin_w ranking_loss(features · w, ranks) +
    ½·l2·‖w − prior‖², by L-BFGS from ``prior``. features (B, K, H), each list best first as
    ranked rows are, list_mask (B, K) bool, ranks (B, K) int (tied pairs skipped), prior (H,) →
    w (H,). The loss is the rm stage's
    (``ranking_loss`` above: each list averaged over its pairs, lists equally weighted);
    the bias cancels in every pair and is not fitted."""
    w = prior.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        rewards = features @ w  # (B, K)
        loss = ranking_loss(rewards, list_mask, ranks=ranks).loss + \
            0.5 * l2 * (w - prior).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()
