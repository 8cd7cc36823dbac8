"""Pure tensor math of RLHF: every function imports only torch and is tested by hand in tests/ops."""
from rlhfkit.ops.logprobs import (
    entropy_from_logits,
    selective_logprobs,
    shift_for_next_token,
)
from rlhfkit.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "entropy_from_logits", "selective_logprobs", "shift_for_next_token",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
]

from rlhfkit.ops.dpo import (  # noqa: E402
    DPO_LOSSES,
    DPOMetrics,
    PreferenceLogps,
    dpo_metrics,
    hinge_loss,
    ipo_loss,
    sigmoid_loss,
    simpo_loss,
)
from rlhfkit.ops.ranking import (  # noqa: E402
    RankingLossOutput,
    pairwise_loss,
    ranked_pair_mask,
    ranking_loss,
)

__all__ += [
    "DPO_LOSSES", "DPOMetrics", "PreferenceLogps", "dpo_metrics", "hinge_loss", "ipo_loss",
    "sigmoid_loss", "simpo_loss",
    "RankingLossOutput", "pairwise_loss", "ranked_pair_mask", "ranking_loss",
]

from rlhfkit.ops.ppo import (  # noqa: E402
    KL_ESTIMATORS,
    GAEOutput,
    PolicyLossOutput,
    RewardOutput,
    ValueLossOutput,
    adaptive_kl_update,
    apply_missing_eos_penalty,
    compute_rewards,
    explained_variance,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    last_token_mask,
    policy_loss,
    value_loss,
)

__all__ += [
    "KL_ESTIMATORS", "GAEOutput", "PolicyLossOutput", "RewardOutput", "ValueLossOutput",
    "adaptive_kl_update", "apply_missing_eos_penalty", "compute_rewards", "explained_variance",
    "gae", "kl_k1", "kl_k2", "kl_k3", "last_token_mask", "policy_loss", "value_loss",
]

from rlhfkit.ops.sampling import (  # noqa: E402
    Candidates,
    filter_candidates,
    inverse_cdf_sample,
    sample_next_tokens,
    top_p_keep_mask,
)

__all__ += [
    "Candidates", "filter_candidates", "inverse_cdf_sample", "sample_next_tokens",
    "top_p_keep_mask",
]
