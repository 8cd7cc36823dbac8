"""Direct preference optimisation loss family, and KTO for unpaired labels. Pure torch.

Every loss takes sequence log-probs (B,), summed over response tokens, packed in a
``PreferenceLogps``, and returns per-example losses (B,): the trainer chooses how to average
(and how to normalise across data-parallel processes). All losses share one signature,
``loss(logps, beta=..., label_smoothing=..., gamma=...)``, so a trainer picks one by name from
``DPO_LOSSES``; each docstring says which keyword arguments it uses, the others are ignored.

Notation: π_w, π_l = policy log-probs of the chosen / rejected response, ref_w, ref_l the
reference policy's, |y_w|, |y_l| their numbers of response tokens, and the log-ratio margin

    z = (π_w − ref_w) − (π_l − ref_l)                                     (B,)

Tests: tests/ops/test_dpo.py.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F


class PreferenceLogps(NamedTuple):
    policy_chosen: torch.Tensor  # (B,) Σ_t log π(y_w,t | x, y_w,<t)
    policy_rejected: torch.Tensor  # (B,) Σ_t log π(y_l,t | x, y_l,<t)
    ref_chosen: Optional[torch.Tensor] = None  # (B,) same under ref_policy; unused by simpo
    ref_rejected: Optional[torch.Tensor] = None  # (B,)
    chosen_len: Optional[torch.Tensor] = None  # (B,) |y_w| response tokens; ipo and simpo only
    rejected_len: Optional[torch.Tensor] = None  # (B,) |y_l|


class DPOMetrics(NamedTuple):
    chosen_rewards: torch.Tensor  # (B,) β(π_w − ref_w), the implicit reward of DPO eq. 5
    rejected_rewards: torch.Tensor  # (B,) β(π_l − ref_l)
    reward_margin: torch.Tensor  # (B,) chosen_rewards − rejected_rewards
    reward_accuracy: torch.Tensor  # (B,) float, 1.0 where chosen_rewards > rejected_rewards


def _logratio_margin(logps: PreferenceLogps) -> torch.Tensor:
    """z = (π_w − ref_w) − (π_l − ref_l), shape (B,)."""
    return (logps.policy_chosen - logps.ref_chosen) - (logps.policy_rejected - logps.ref_rejected)


def _per_token(seq_logps: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Sequence log-prob (B,) / number of response tokens (B,); an empty response divides by 1."""
    return seq_logps / length.to(seq_logps.dtype).clamp(min=1)


def dpo_loss(logps: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0,
                 gamma: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): −log σ(βz), per example (B,). DPO_LOSSES["sigmoid"].

    With label_smoothing ε > 0, the conservative DPO of Mitchell (2023), which assumes each
    preference label is flipped with probability ε:
    −(1 − ε)·log σ(βz) − ε·log σ(−βz). Uses beta, label_smoothing; ignores gamma.
    At policy == reference (z = 0) the loss is log 2 whatever β and ε.
    """
    scaled = beta * _logratio_margin(logps)  # (B,)
    return -(1 - label_smoothing) * F.logsigmoid(scaled) - label_smoothing * F.logsigmoid(-scaled)


def ipo_loss(logps: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0,
             gamma: float = 0.0) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm…", §5.2): (z − 1/(2β))², (B,).

    The squared loss regresses the margin onto 1/(2β) instead of pushing it to infinity, so
    the policy cannot drift arbitrarily far from the reference on deterministic preferences.
    As in TRL's ``ipo``, z uses per-token-averaged log-ratios:
    z = (π_w − ref_w)/|y_w| − (π_l − ref_l)/|y_l|. Here β is the paper's τ (regularisation
    strength): larger β, smaller target margin. Uses beta and the lengths; ignores
    label_smoothing, gamma. At policy == reference the loss is 1/(4β²).
    """
    z = (_per_token(logps.policy_chosen - logps.ref_chosen, logps.chosen_len)
         - _per_token(logps.policy_rejected - logps.ref_rejected, logps.rejected_len))  # (B,)
    return (z - 1 / (2 * beta)) ** 2


def simpo_loss(logps: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0,
               gamma: float = 0.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6): −log σ(β·(π_w/|y_w| − π_l/|y_l|) − γ), (B,).

    Reference-free: the implicit reward is the length-normalised policy log-prob, so no
    ref_policy forward pass is needed (ref_* fields may be None). γ is the target reward
    margin (the paper tunes β in 2–10 and γ/β around 0.5; γ = 0 turns the margin off).
    Uses beta, gamma and the lengths; ignores the ref fields and label_smoothing.
    """
    avg_chosen = _per_token(logps.policy_chosen, logps.chosen_len)  # (B,)
    avg_rejected = _per_token(logps.policy_rejected, logps.rejected_len)  # (B,)
    return -F.logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)


def hinge_loss(logps: PreferenceLogps, beta: float = 0.1, label_smoothing: float = 0.0,
               gamma: float = 0.0) -> torch.Tensor:
    """SLiC-HF hinge (Zhao et al. 2023): max(0, 1 − βz), (B,).

    SLiC's calibration loss max(0, δ − log π(y_w) + log π(y_l)), taken on log-ratios against
    the reference and scaled by β (δ = 1): it stops pushing once z exceeds 1/β. Uses beta; ignores
    label_smoothing, gamma. At z = 0 the loss is 1.
    """
    return torch.relu(1 - beta * _logratio_margin(logps))


LossFn = Callable[..., torch.Tensor]

DPO_LOSSES: dict[str, LossFn] = {
    "sigmoid": dpo_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "hinge": hinge_loss,
}


# --- KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization") ---
# Unpaired examples: one completion y per prompt x with a binary label (desirable or not), and
# r = log π(y|x) − log ref(y|x) its log-ratio. Not a pair loss, so not in DPO_LOSSES: the
# trainer picks it by dpo.loss_type = kto.

def kto_reference_point(kl_logratios: torch.Tensor, count: float | torch.Tensor | None = None
                        ) -> torch.Tensor:
    """z_ref = max(0, Σ kl_logratios / count), detached: the batch estimate of KL(π ‖ ref) from
    log-ratios of *mismatched* completions y' (another prompt's completion under x; KTO eq. 4
    and its §4.1). ``count`` defaults to the number of log-ratios given; the trainer passes
    the global sum and count over processes so every shard sees one z_ref. ()"""
    count = kl_logratios.numel() if count is None else count
    total = kl_logratios.detach().sum()
    return (total / torch.as_tensor(count, dtype=total.dtype).clamp(min=1)).clamp(min=0)


def kto_loss(logratios: torch.Tensor, desirable_mask: torch.Tensor, z_ref: torch.Tensor,
             beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (eq. 8): λ_y − v(x, y) per example (B,), with r = ``logratios`` (B,) and
    v = λ_D·σ(β(r − z_ref)) for a desirable y, λ_U·σ(β(z_ref − r)) for an undesirable one.
    λ_D, λ_U = ``desirable_weight``, ``undesirable_weight`` (the paper keeps
    λ_D·n_D / (λ_U·n_U) in [1, 4/3]). At policy == reference with z_ref = 0 the loss is λ_y / 2.
    """
    weights = torch.where(desirable_mask, torch.full_like(logratios, desirable_weight),
                          torch.full_like(logratios, undesirable_weight))  # (B,) λ_y
    margin = torch.where(desirable_mask, logratios - z_ref, z_ref - logratios)  # (B,)
    return weights * (1 - torch.sigmoid(beta * margin))


def dpo_metrics(logps: PreferenceLogps, beta: float) -> DPOMetrics:
    """Implicit rewards β·log(π/ref) of chosen and rejected (DPO eq. 5), detached, each (B,).

    Needs the ref fields (for simpo, log the loss itself instead).
    """
    chosen = (beta * (logps.policy_chosen - logps.ref_chosen)).detach()  # (B,)
    rejected = (beta * (logps.policy_rejected - logps.ref_rejected)).detach()  # (B,)
    return DPOMetrics(
        chosen_rewards=chosen,
        rejected_rewards=rejected,
        reward_margin=chosen - rejected,
        reward_accuracy=(chosen > rejected).to(chosen.dtype),
    )
