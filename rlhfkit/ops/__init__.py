"""Pure tensor math of RLHF: every function imports only torch and is tested by hand in tests/ops.

Formula index: each formula, the function that computes it (rlhfkit/ops/), and the test that pins
it by hand (tests/ops/). tests/test_docs.py checks that every reference below exists.

Next-token log-probs: log p(y_t+1 | y_≤t) = l_t[y_t+1] − logsumexp(l_t), logits t ↔ token t + 1
    ops/logprobs.py::selective_logprobs, ops/logprobs.py::shift_for_next_token
    test_logprobs.py::test_selective_logprobs_hand_value
    test_logprobs.py::test_shift_pairs_logit_t_with_token_t_plus_1
Entropy: H = logsumexp(l) − Σ softmax(l)·l
    ops/logprobs.py::entropy_from_logits · test_logprobs.py::test_entropy_hand_values
Masked reductions: Σ / mean / var / whiten (x − μ)/√(σ² + ε) over positions where mask is True
    ops/masked.py::masked_sum, masked_mean, masked_var, masked_whiten
    test_masked.py::test_masked_mean_overall_and_per_row, test_masked_whiten_hand_values
Padding never reaches arithmetic: where(mask, x, 0); log π − log π_other at real tokens
    ops/masked.py::zero_outside_mask, masked_log_ratio
    test_masked.py::test_zero_outside_mask_blocks_nan_in_the_gradient
    test_masked.py::test_masked_log_ratio_by_hand
KL estimators (Schulman 2020): k1 = log π − log π_ref, k2 = ½·k1², k3 = (r − 1) − log r
    ops/ppo.py::kl_k1, kl_k2, kl_k3 (KL_ESTIMATORS)
    test_ppo_ops.py::test_kl_k1_is_log_ratio, test_kl_k2_is_half_squared_log_ratio
    test_ppo_ops.py::test_kl_k3_is_r_minus_1_minus_log_r
Per-token KL reward: r_t = −kl_coef·KL_t, + clip(score, ±c) at the last real token
    ops/ppo.py::compute_rewards, last_token_mask, apply_missing_eos_penalty
    test_ppo_ops.py::test_compute_rewards_per_token_kl_and_score_at_last_real_token
GAE (Schulman et al. 2016, eq. 16): δ_t = r_t + γV_t+1 − V_t, A_t = δ_t + γλ·A_t+1, R = A + V
    ops/ppo.py::gae · test_ppo_ops.py::test_gae_gamma_1_lambda_095
PPO clipped surrogate (Schulman et al. 2017, eq. 7): max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))
    ops/ppo.py::clipped_surrogate · test_ppo_ops.py::test_clipped_surrogate_per_token_by_hand
PPO policy loss: token mean of the surrogate; clipfrac; approx_kl = mean k2(π_old, π)
    ops/ppo.py::policy_loss · test_ppo_ops.py::test_policy_loss_clipping_by_hand
Clipped value loss: ½·mean max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²)
    ops/ppo.py::value_loss · test_ppo_ops.py::test_value_loss_clipping_by_hand
Explained variance: 1 − Var[R − V] / Var[R]
    ops/ppo.py::explained_variance · test_ppo_ops.py::test_explained_variance_by_hand
Adaptive KL controller (Ziegler et al. 2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)
    ops/ppo.py::adaptive_kl_update · test_ppo_ops.py::test_adaptive_kl_update_by_hand
Ranking loss (InstructGPT eq. 1): −1/C(K,2)·Σ_i<j log σ(r_i − r_j − m); K = 2 is Bradley–Terry
    ops/ranking.py::ranking_loss, pairwise_loss
    test_ranking.py::test_k3_averages_over_three_pairs, test_pairwise_loss_is_ranking_at_k2
DPO (Rafailov et al. 2023, eq. 7): −log σ(β·z), z = (π_w − ref_w) − (π_l − ref_l)
    ops/dpo.py::dpo_loss (DPO_LOSSES["sigmoid"]) · test_dpo.py::test_sigmoid_hand_value
DPO family: IPO (z − 1/(2β))², SimPO −log σ(β·Δ(π/|y|) − γ), SLiC hinge max(0, 1 − β·z)
    ops/dpo.py::ipo_loss, simpo_loss, hinge_loss (DPO_LOSSES)
    test_dpo.py::test_ipo_hand_value, test_simpo_hand_value, test_hinge_hand_value
KTO (Ethayarajh et al. 2024): λ_y − v, v = λ_D·σ(β(r − z_ref)) or λ_U·σ(β(z_ref − r)), r = π − ref;
z_ref = max(0, mean log-ratio of mismatched completions), detached
    ops/dpo.py::kto_loss, kto_reference_point
    test_dpo.py::test_kto_hand_values, test_kto_reference_point_is_a_clamped_detached_mean
DPO implicit rewards: β·(π − ref) of chosen and rejected, margin, accuracy
    ops/dpo.py::dpo_metrics · test_dpo.py::test_metrics_hand_values
GRPO group advantages (Shao et al. 2024): A_i = (r_i − mean of its group) / (std + eps)
    ops/grpo.py::group_advantages
    test_grpo_ops.py::test_group_scale_uses_each_groups_unbiased_std_and_equal_groups_get_zero
GRPO loss: clipped surrogate + β·k3 to the reference, token or sequence aggregation
    ops/grpo.py::grpo_loss
    test_grpo_ops.py::test_on_policy_loss_is_minus_the_advantage_per_token_or_per_sequence
Critic-free advantage estimators, picked by name (ops/grpo.py::ADVANTAGES):
  Dr. GRPO (Liu et al. 2025): A_i = r_i − mean of its group, no std
    ops/grpo.py::dr_grpo_advantages
    test_grpo_ops.py::test_dr_grpo_centres_each_group_exactly_without_any_divisor
  RLOO (Ahmadian et al. 2024): A_i = r_i − mean of the other G − 1 of its group
    ops/grpo.py::rloo_advantages · test_grpo_ops.py::test_rloo_subtracts_the_mean_of_the_other_samples
    test_grpo_ops.py::test_rloo_with_two_samples_is_each_score_minus_the_other
  REINFORCE++ (Hu 2025): r_t = −kl_coef·KL_t + score at the last token, A_t = whiten(Σ_s≥t r_s)
  over the batch; the baseline variant subtracts the group mean from the scores first
    ops/grpo.py::reinforce_pp_advantages, reinforce_pp_baseline_advantages, returns_to_go
    test_grpo_ops.py::test_reinforce_pp_folds_the_kl_into_token_rewards_and_whitens_over_the_batch
    test_grpo_ops.py::test_reinforce_pp_baseline_subtracts_the_group_mean_first
    test_grpo_ops.py::test_returns_to_go_is_gae_with_no_critic_and_lambda_1
KL in the reward for the per-response estimators (RLOO's r − β·log π/π_ref): r_i − kl_coef·Σ_t KL_t
    ops/grpo.py::kl_folded_scores
    test_grpo_ops.py::test_per_response_estimators_fold_the_summed_kl_penalty_into_the_score
GSPO sequence ratio (Zheng et al. 2025): s_i = exp(mean_t log ρ_t), clipped per response
    ops/grpo.py::RATIOS, grpo_loss
    test_grpo_ops.py::test_sequence_ratio_is_the_geometric_mean_and_clips_whole_responses
    test_grpo_ops.py::test_on_policy_sequence_ratio_has_the_token_ratios_gradient
Dr. GRPO's constant loss normaliser: Σ over real tokens / (B × max response length)
    ops/grpo.py::AGGREGATIONS · test_grpo_ops.py::test_constant_aggregation_divides_by_rows_times_width
Rollout fidelity: |Δ| = |log π_trainer − log π_sampler| per real token, mean, max, share > 0.1
    ops/fidelity.py::logprob_gap · test_fidelity.py::test_logprob_gap_hand_values
Truncated importance sampling (Yao et al. 2025): w_t = min(π_trainer / π_sampler, C), × the
policy-gradient term of PPO and GRPO
    ops/fidelity.py::truncated_importance_weights, ops/ppo.py::policy_loss, ops/grpo.py::grpo_loss
    test_fidelity.py::test_truncated_importance_weights_hand_values
    test_fidelity.py::test_tis_weights_scale_each_tokens_policy_gradient_term
Sampling filters: temperature, top-k, then top-p (keep while the mass before < top_p)
    ops/sampling.py::filter_candidates, top_p_keep_mask, sample_next_tokens
    test_sampling.py::test_top_p_keeps_tokens_whose_mass_before_is_below_top_p
    test_sampling.py::test_filters_keep_the_same_tokens_as_hf_warpers
Inverse-CDF draw: column j where (1 − u)·W ∈ (C_j−1, C_j], C = cumsum(exp(s − max s))
    ops/sampling.py::inverse_cdf_sample · test_sampling.py::test_inverse_cdf_hand_values
Simulated annotator (issue #14): rank by s/T + Gumbel (Plackett–Luce; K = 2: σ(Δ/T)), then
the ranking reversed with probability p: P(a ≻ b) = (1 − p)·σ(Δ/T) + p·(1 − σ(Δ/T))
    ops/noise.py::noisy_ranks, competition_ranks, preference_probability
    test_noise.py::test_pair_frequency_matches_bradley_terry_with_flips
    test_noise.py::test_first_place_frequency_is_the_softmax, test_preference_probability_by_hand
Leaderboard (Chatbot Arena): Bradley–Terry P(a ≻ b) = σ(θ_a − θ_b), logistic MLE + λ/2·Σθ², ties
half; Elo R = 1000 + 400·log10(e)·θ; intervals from a bootstrap over judgments
    ops/leaderboard.py::bradley_terry, ranking_pairs, bootstrap_intervals, win_rate
    test_leaderboard_ops.py::test_three_wins_to_one_is_400_log10_3_apart
    test_leaderboard_ops.py::test_three_models_in_order, test_a_tie_counts_half
    test_leaderboard_ops.py::test_interval_holds_the_estimate_and_narrows_with_more_data
Variant tables: one function per variant, picked by name (ValueError listing the allowed ones)
    ops/tables.py::pick
    test_tables.py::test_pick_names_what_was_asked_and_the_sorted_allowed_names
"""
from rlhfkit.ops.logprobs import (
    entropy_from_logits,
    selective_logprobs,
    shift_for_next_token,
)
from rlhfkit.ops.masked import (
    masked_log_ratio,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    zero_outside_mask,
)

__all__ = [
    "entropy_from_logits", "selective_logprobs", "shift_for_next_token",
    "masked_log_ratio", "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "zero_outside_mask",
]

from rlhfkit.ops.dpo import (  # noqa: E402
    DPO_LOSSES,
    DPOMetrics,
    PreferenceLogps,
    dpo_loss,
    dpo_metrics,
    hinge_loss,
    ipo_loss,
    simpo_loss,
)
from rlhfkit.ops.ranking import (  # noqa: E402
    RankingLossOutput,
    pairwise_loss,
    ranked_pair_mask,
    ranking_loss,
)

__all__ += [
    "DPO_LOSSES", "DPOMetrics", "PreferenceLogps", "dpo_loss", "dpo_metrics", "hinge_loss",
    "ipo_loss", "simpo_loss",
    "RankingLossOutput", "pairwise_loss", "ranked_pair_mask", "ranking_loss",
]

from rlhfkit.ops.ppo import (  # noqa: E402
    KL_ESTIMATORS,
    ClippedSurrogate,
    GAEOutput,
    PolicyLossOutput,
    RewardOutput,
    ValueLossOutput,
    adaptive_kl_update,
    apply_missing_eos_penalty,
    clipped_surrogate,
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
    "KL_ESTIMATORS", "ClippedSurrogate", "GAEOutput", "PolicyLossOutput", "RewardOutput",
    "ValueLossOutput", "adaptive_kl_update", "apply_missing_eos_penalty", "clipped_surrogate",
    "compute_rewards", "explained_variance",
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
