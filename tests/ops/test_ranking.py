"""Hand-derived checks of rlhfkit/ops/ranking.py.

Notation: sp(x) = log(1 + e^x) = −log σ(−x), so one pair with gap d = r_i − r_j costs sp(−d).
Values used below (float64):
    sp(−1) = log(1 + e^−1) = 0.31326168751822286
    sp(−2) = log(1 + e^−2) = 0.1269280110429725
    sp(−3) = log(1 + e^−3) = 0.04858735157374206
    sp(+1) = 1 + sp(−1)    = 1.3132616875182228
    sp(−½) = log(1 + e^−½) = 0.4740769841801067
    sp(0)  = log 2         = 0.6931471805599453
"""
import math

import pytest
import torch

from rlhfkit.ops.ranking import (
    binary_entropy,
    fit_head,
    pair_disagreement,
    pairwise_loss,
    ranked_pair_mask,
    ranking_loss,
)

SP_M1 = 0.31326168751822286
SP_M2 = 0.1269280110429725
SP_M3 = 0.04858735157374206
SP_P1 = 1.3132616875182228
SP_MHALF = 0.4740769841801067
LOG2 = 0.6931471805599453
# K = 4 list r = [3, 1, 2, 0] (slot 2 beats slot 1: one misranked pair):
# pairs (0,1) d=2, (0,2) d=1, (0,3) d=3, (1,2) d=−1, (1,3) d=1, (2,3) d=2
# loss = (sp(−2) + sp(−1) + sp(−3) + sp(1) + sp(−1) + sp(−2)) / 6 = 2.2422284362143561 / 6
K4_LOSS = 0.37370473936905935

TOL = dict(rtol=0, atol=1e-12)


@pytest.fixture
def t(device):
    """Tensors on the test's device, float64 unless told: every test here runs on each device
    (tests/conftest.py::device), as the op builds its pair mask and margin beside the rewards."""
    return lambda values, dtype=torch.float64: torch.tensor(values, dtype=dtype, device=device)


def full_mask(rewards):
    return torch.ones_like(rewards, dtype=torch.bool)


def test_k2_is_bradley_terry(t):
    # r = [1, 0]: one pair, d = 1 → −log σ(1) = log(1 + e^−1)
    r = t([[1.0, 0.0]])
    out = ranking_loss(r, full_mask(r))
    torch.testing.assert_close(out.loss, t(SP_M1), **TOL)
    torch.testing.assert_close(out.pair_accuracy, t(1.0), **TOL)
    torch.testing.assert_close(out.mean_margin, t(1.0), **TOL)
    assert out.num_pairs.item() == 1


def test_k3_averages_over_three_pairs(t):
    # r = [2, 1, 0]: pairs d = 1, 2, 1 → (2·sp(−1) + sp(−2)) / C(3,2) = 0.7534513860794183 / 3
    r = t([[2.0, 1.0, 0.0]])
    out = ranking_loss(r, full_mask(r))
    torch.testing.assert_close(out.loss, t(0.25115046202647273), **TOL)
    torch.testing.assert_close(out.mean_margin, t(4.0 / 3.0), **TOL)
    assert out.num_pairs.item() == 3


def test_k4_with_one_misranked_pair(t):
    r = t([[3.0, 1.0, 2.0, 0.0]])
    out = ranking_loss(r, full_mask(r))
    torch.testing.assert_close(out.loss, t(K4_LOSS), **TOL)
    torch.testing.assert_close(out.pair_accuracy, t(5.0 / 6.0), **TOL)  # only (1,2) is wrong
    torch.testing.assert_close(out.mean_margin, t(8.0 / 6.0), **TOL)  # (2+1+3−1+1+2)/6
    assert out.num_pairs.item() == 6


def test_pair_mask_is_i_before_j_among_valid_slots(t):
    mask = t([[True, True, True, False]], torch.bool)
    expected = t([[[False, True, True, False],
                  [False, False, True, False],
                  [False, False, False, False],
                  [False, False, False, False]]], torch.bool)
    assert torch.equal(ranked_pair_mask(mask), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_gap_is_exact_and_finite(dtype, t):
    # d = 2000: −log σ(2000) = log(1 + e^−2000) = 0 to machine precision.
    # d = −2000: −log σ(−2000) = 2000 + log(1 + e^−2000) = 2000. A naive log(1 + exp(2000)) is inf.
    r = t([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype).requires_grad_()
    out = ranking_loss(r, full_mask(r))
    torch.testing.assert_close(out.loss, t(1000.0, dtype), rtol=0, atol=1e-6)
    per_list = [ranking_loss(r[i:i + 1], full_mask(r[i:i + 1])).loss for i in range(2)]
    torch.testing.assert_close(per_list[0], t(0.0, dtype), rtol=0, atol=1e-6)
    torch.testing.assert_close(per_list[1], t(2000.0, dtype), rtol=0, atol=1e-6)
    out.loss.backward()
    # ∂/∂r_0 of sp(−d)/2 = −σ(−d)/2: 0 for the right order, −½ for the reversed list.
    torch.testing.assert_close(r.grad, t([[0.0, 0.0], [-0.5, 0.5]], dtype),
                               rtol=0, atol=1e-6)


def test_mixed_k_batch_equals_mean_of_separate_lists_and_padding_never_leaks(t):
    # List 0: K=2, r = [1, 0] → sp(−1); list 1: K=4 (the list above) → K4_LOSS.
    # List 2: a single answer (no pair) → left out of the list average.
    # Each list weighs the same: (sp(−1) + K4_LOSS) / 2 = 0.3434832134436411.
    nan, inf = float("nan"), float("inf")
    r = t([[1.0, 0.0, nan, inf],
           [3.0, 1.0, 2.0, 0.0],
           [5.0, -inf, nan, nan]]).requires_grad_()
    mask = t([[True, True, False, False],
              [True, True, True, True],
              [True, False, False, False]], torch.bool)
    out = ranking_loss(r, mask)
    torch.testing.assert_close(out.loss, t(0.3434832134436411), **TOL)
    separate = (ranking_loss(t([[1.0, 0.0]]), t([[True] * 2], torch.bool)).loss
                + ranking_loss(t([[3.0, 1.0, 2.0, 0.0]]), t([[True] * 4], torch.bool)).loss) / 2
    torch.testing.assert_close(out.loss, separate, **TOL)
    # metrics pool all 1 + 6 pairs: accuracy (1 + 5)/7, mean margin (1 + 8)/7
    torch.testing.assert_close(out.pair_accuracy, t(6.0 / 7.0), **TOL)
    torch.testing.assert_close(out.mean_margin, t(9.0 / 7.0), **TOL)
    assert out.num_pairs.item() == 7
    out.loss.backward()
    assert torch.isfinite(r.grad).all()
    assert torch.equal(r.grad[~mask], t([0.0] * int((~mask).sum())))


def test_padding_with_centering_never_leaks(t):
    r = t([[2.0, 0.0, float("nan")]]).requires_grad_()
    mask = t([[True, True, False]], torch.bool)
    out = ranking_loss(r, mask, center_coef=0.1)
    # sp(−2) + 0.1 · (2² + 0²)/2 = 0.1269280110429725 + 0.2
    torch.testing.assert_close(out.loss, t(0.32692801104297253), **TOL)
    out.loss.backward()
    assert torch.isfinite(r.grad).all() and r.grad[0, 2] == 0


def test_scalar_margin(t):
    # r = [1, 0], margin ½: −log σ(1 − ½) = log(1 + e^−½)
    r = t([[1.0, 0.0]])
    torch.testing.assert_close(ranking_loss(r, full_mask(r), margin=0.5).loss, t(SP_MHALF), **TOL)


def test_per_list_margin(t):
    # Two copies of r = [1, 0] with margins 0 and 1: (sp(−1) + sp(0)) / 2 = (0.3132… + log 2)/2
    r = t([[1.0, 0.0], [1.0, 0.0]])
    out = ranking_loss(r, full_mask(r), margin=t([0.0, 1.0]))
    torch.testing.assert_close(out.loss, t(0.5032044340390841), **TOL)
    # the margin changes the loss only, not the reported reward gap
    torch.testing.assert_close(out.mean_margin, t(1.0), **TOL)


def test_per_list_margin_in_k3(t):
    # r = [2, 1, 0] with margin 1: gaps minus 1 are 0, 1, 0 → (2·log 2 + sp(−1)) / 3
    r = t([[2.0, 1.0, 0.0]])
    expected = (2 * LOG2 + SP_M1) / 3
    torch.testing.assert_close(ranking_loss(r, full_mask(r), margin=t([1.0])).loss, t(expected), **TOL)


def test_centering_adds_mean_square_reward(t):
    # r = [[3, 1], [-1, -3]]: both gaps 2 → sp(−2); mean r² = (9 + 1 + 1 + 9)/4 = 5
    # loss = sp(−2) + 0.01 · 5 = 0.1769280110429725
    r = t([[3.0, 1.0], [-1.0, -3.0]])
    out = ranking_loss(r, full_mask(r), center_coef=0.01)
    torch.testing.assert_close(out.loss, t(SP_M2 + 0.05), **TOL)


def test_ties_are_not_accurate(t):
    # r = [0, 0]: loss log 2, the tie counts as a miss
    r = t([[0.0, 0.0]])
    out = ranking_loss(r, full_mask(r))
    torch.testing.assert_close(out.loss, t(LOG2), **TOL)
    torch.testing.assert_close(out.pair_accuracy, t(0.0), **TOL)


def test_shift_invariance(t):
    # Only reward differences matter (before centering).
    r = t([[3.0, 1.0, 2.0, 0.0]])
    torch.testing.assert_close(ranking_loss(r + 17.0, full_mask(r)).loss, t(K4_LOSS), **TOL)


def test_pairwise_loss_is_ranking_at_k2(t):
    chosen, rejected = t([1.0, 2.0]), t([0.0, 5.0])
    # gaps 1 and −3 → (sp(−1) + sp(3)) / 2, sp(3) = 3 + sp(−3)
    expected = (SP_M1 + 3.0 + SP_M3) / 2
    out = pairwise_loss(chosen, rejected)
    torch.testing.assert_close(out.loss, t(expected), **TOL)
    torch.testing.assert_close(out.pair_accuracy, t(0.5), **TOL)
    torch.testing.assert_close(pairwise_loss(t([1.0]), t([0.0]), margin=0.5).loss, t(SP_MHALF), **TOL)


def test_gradient_pushes_best_up_and_worst_down(t):
    # r = [1, 0]: ∂/∂r_0 sp(−(r_0 − r_1)) = −σ(−1) = −0.2689414213699951, ∂/∂r_1 = +σ(−1)
    r = t([[1.0, 0.0]]).requires_grad_()
    ranking_loss(r, full_mask(r)).loss.backward()
    s = 1 / (1 + math.e)
    torch.testing.assert_close(r.grad, t([[-s, s]]), **TOL)


def test_tied_pairs_are_skipped(t):
    # r = [2, 1, 0] with ranks [1, 2, 2]: slots 1 and 2 tie, so only (0,1) d=1 and (0,2) d=2
    # count: loss = (sp(−1) + sp(−2)) / 2 = (0.31326168751822286 + 0.1269280110429725) / 2
    r = t([[2.0, 1.0, 0.0]])
    out = ranking_loss(r, full_mask(r), ranks=t([[1, 2, 2]], torch.long))
    torch.testing.assert_close(out.loss, t(0.22009484928059768), **TOL)
    torch.testing.assert_close(out.pair_accuracy, t(1.0), **TOL)
    torch.testing.assert_close(out.mean_margin, t(1.5), **TOL)  # (1 + 2) / 2
    assert out.num_pairs.item() == 2


def test_a_list_of_ties_drops_out_and_strict_ranks_change_nothing(t):
    # List 0 ranks [1, 1] (a tie: no pair) is left out of the list average; list 1 ranks
    # [1, 2] gives sp(−1). Strict ranks 1..K equal no ranks at all (K4_LOSS).
    r = t([[1.0, 0.0], [1.0, 0.0]]).requires_grad_()
    out = ranking_loss(r, full_mask(r), ranks=t([[1, 1], [1, 2]], torch.long))
    torch.testing.assert_close(out.loss, t(SP_M1), **TOL)
    assert out.num_pairs.item() == 1
    out.loss.backward()
    assert torch.equal(r.grad[0], t([0.0, 0.0]))  # the tie pulls nothing
    k4 = t([[3.0, 1.0, 2.0, 0.0]])
    strict = ranking_loss(k4, full_mask(k4), ranks=t([[1, 2, 3, 4]], torch.long)).loss
    torch.testing.assert_close(strict, t(K4_LOSS), **TOL)
    # ranks [1, 2, 2, 3] on that list: pair (1,2) d=−1 is a tie and drops out:
    # (sp(−2) + sp(−1) + sp(−3) + sp(−1) + sp(−2)) / 5 = (2.2422284362143561 − sp(1)) / 5
    tied = ranking_loss(k4, full_mask(k4), ranks=t([[1, 2, 2, 3]], torch.long))
    torch.testing.assert_close(tied.loss, t((2.2422284362143561 - SP_P1) / 5), **TOL)
    torch.testing.assert_close(tied.pair_accuracy, t(1.0), **TOL)


def test_pair_disagreement_by_hand():
    """M = 2 members, K = 2: member 1 scores (ln 3, 0) → p = σ(ln 3) = 3/4; member 2 (0, ln 3)
    → p = 1/4. p̄ = 1/2: H(1/2) = ln 2 = 0.693147; H(3/4) = H(1/4) = ¾ ln(4/3) + ¼ ln 4 =
    0.215762 + 0.346574 = 0.562335 → I = 0.693147 − 0.562335 = 0.130812.
    K = 3, member 1 (ln 3, 0, 0), member 2 (0, ln 3, 0): pair (0, 1) as above, 0.130812; pair
    (0, 2): p = 3/4 and 1/2, p̄ = 5/8, H(5/8) = ⅝ ln(8/5) + ⅜ ln(8/3) = 0.293752 + 0.367811 =
    0.661563, minus (0.562335 + 0.693147)/2 = 0.627741 → 0.033822; pair (1, 2) the same by
    symmetry: 0.130812 + 2 × 0.033822 = 0.198456."""
    ln3 = math.log(3)
    two = torch.tensor([[ln3, 0.0], [0.0, ln3]], dtype=torch.float64)
    assert float(pair_disagreement(two)) == pytest.approx(0.130812, abs=1e-6)
    three = torch.tensor([[ln3, 0.0, 0.0], [0.0, ln3, 0.0]], dtype=torch.float64)
    assert float(pair_disagreement(three)) == pytest.approx(0.198456, abs=1e-6)
    assert float(binary_entropy(torch.tensor([0.0, 0.5, 1.0])).sum()) == pytest.approx(math.log(2))


def test_pair_disagreement_is_zero_when_members_agree_however_unsure():
    """Every member a coin toss on every pair (equal scores): the smallest score gap would rank
    this task first (gap 0); the disagreement is 0 — the annotator's noise is not the model's
    ignorance. Agreeing confident members: 0 too. Shifting one member's scores by a constant
    or permuting members changes nothing."""
    assert float(pair_disagreement(torch.zeros(4, 3, dtype=torch.float64))) == 0.0
    same = torch.tensor([[2.0, -1.0, 0.5]] * 3, dtype=torch.float64)
    assert float(pair_disagreement(same)) == pytest.approx(0.0, abs=1e-12)
    scores = torch.tensor([[0.3, -1.2, 0.8, 0.0], [1.1, 0.4, -0.6, 0.2],
                           [-0.5, 0.9, 0.1, 1.5]], dtype=torch.float64)
    value = float(pair_disagreement(scores))
    assert value > 0
    shifted = scores + torch.tensor([[5.0], [-2.0], [0.0]], dtype=torch.float64)
    assert float(pair_disagreement(shifted)) == pytest.approx(value, abs=1e-12)
    assert float(pair_disagreement(scores[[2, 0, 1]])) == pytest.approx(value, abs=1e-12)


def test_fit_head_by_its_stationarity_condition():
    """One list, best candidate features (1, 0), worse (0, 0), prior 0, l2 = 1: minimise
    −log σ(w₀) + ½(w₀² + w₁²) → w₁ = 0 and w₀ = σ(−w₀) (gradient −σ(−w₀) + w₀ = 0), ≈ 0.4013.
    A huge l2 keeps the prior, and so does a tie (no pair to learn from)."""
    features = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)  # (B=1, K=2, H=2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    ranks = torch.tensor([[1, 2]])
    prior = torch.zeros(2, dtype=torch.float64)
    w = fit_head(features, mask, ranks, prior, 1.0)
    assert float(w[1]) == pytest.approx(0.0, abs=1e-9)
    assert float(w[0]) == pytest.approx(float(torch.sigmoid(-w[0])), abs=1e-6)
    assert float(w[0]) == pytest.approx(0.4013, abs=1e-3)
    kept = torch.tensor([0.3, -0.7], dtype=torch.float64)
    assert torch.allclose(fit_head(features, mask, ranks, kept, 1e9), kept, atol=1e-6)
    tied = fit_head(features, mask, torch.tensor([[1, 1]]), kept, 1.0)  # no pair: the prior
    assert torch.allclose(tied, kept, atol=1e-9)
