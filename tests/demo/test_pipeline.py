"""The demo's wiring: its knobs become valid stage configs (no model is loaded here)."""
import dataclasses
from pathlib import Path

import pytest

from rlhfkit.config import ConfigError, build
from rlhfkit.demo.pipeline import report_samples, summarize
from rlhfkit.demo.settings import DemoConfig, ENGLISH, LANGUAGES, QUICK, resolve, stage_name
from rlhfkit.demo.stages import policy_settings, reward_model_settings
from rlhfkit.online import grpo, ppo
from rlhfkit.trainers import reward


def test_ppo_settings_build_a_ppo_config_with_a_critic():
    config = resolve(DemoConfig(algorithm="ppo", iterations=7, kl_coef=0.1, minibatches=2))
    built = build(ppo.PPOConfig, policy_settings(config, Path("rm")))
    assert built.train.max_steps == 7 and built.ppo.kl_coef == 0.1 and built.ppo.minibatches == 2
    assert built.critic.model_name == config.policy  # a SmolLM2 critic: the RM is MiniLM
    assert built.output_dir.endswith("ppo") and stage_name(config) == "PPO"


@pytest.mark.parametrize("advantage, name", [("grpo", "GRPO"), ("rloo", "RLOO"),
                                             ("dr_grpo", "Dr. GRPO"), ("raft", "RAFT")])
def test_grpo_settings_build_a_critic_free_config(advantage, name):
    config = resolve(DemoConfig(algorithm="grpo", advantage=advantage, num_generations=4,
                                batch_size=8, kl_coef=0.1, minibatches=2, kl_in_reward=False))
    built = build(grpo.GRPOConfig, policy_settings(config, Path("rm")))
    assert (built.grpo.advantage, built.grpo.num_generations, built.grpo.beta,
            built.grpo.minibatches) == (advantage, 4, 0.1, 2)
    assert built.train.batch_size == 8 and built.output_dir.endswith("grpo")
    assert not hasattr(built, "critic") and stage_name(config) == name


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "dr_grpo"])
def test_kl_in_reward_moves_kl_coef_from_the_loss_to_the_rewards(advantage):
    config = resolve(DemoConfig(algorithm="grpo", advantage=advantage, kl_coef=0.07,
                                kl_in_reward=True))
    built = build(grpo.GRPOConfig, policy_settings(config, Path("rm")))
    assert (built.grpo.beta, built.grpo.kl_coef) == (0.0, 0.07) and built.needs_old_logprobs


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_reward_clip_reaches_the_stage(algorithm):
    config = resolve(DemoConfig(algorithm=algorithm, reward_clip=0.75))
    stage = {"ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[algorithm]
    assert build(stage, policy_settings(config, Path("rm"))).reward.reward_clip == 0.75


@pytest.mark.parametrize("algorithm, continuations", [("ppo", 10 * 8), ("grpo", 10 * 8 * 4)])
def test_target_kl_turns_on_the_adaptive_controller(algorithm, continuations):
    stage = {"ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[algorithm]
    config = resolve(DemoConfig(algorithm=algorithm, iterations=10, batch_size=8,
                                num_generations=4, kl_coef=0.1, target_kl=3.0))
    part = getattr(build(stage, policy_settings(config, Path("rm"))), algorithm)
    assert (part.kl_controller, part.target_kl, part.kl_horizon) == (
        "adaptive", 3.0, continuations // 8)
    fixed = getattr(build(stage, policy_settings(resolve(DemoConfig(algorithm=algorithm)),
                                                 Path("rm"))), algorithm)
    assert fixed.kl_controller == "fixed"  # target_kl 0 by default


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_lr_scheduler_reaches_the_stage(algorithm):
    stage = {"ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[algorithm]
    default = build(stage, policy_settings(resolve(DemoConfig(algorithm=algorithm)), Path("rm")))
    assert default.train.lr_scheduler == ENGLISH["lr_scheduler"]
    config = resolve(DemoConfig(algorithm=algorithm, lr_scheduler="linear"))
    assert build(stage, policy_settings(config, Path("rm"))).train.lr_scheduler == "linear"


@pytest.mark.parametrize("key, default, value", [("final_interpolation", 1.0, 0.6),
                                                 ("final_average_from", 0, 5)])
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_the_final_policys_keys_reach_the_stage(algorithm, key, default, value):
    stage = {"ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[algorithm]
    built = build(stage, policy_settings(resolve(DemoConfig(algorithm=algorithm)), Path("rm")))
    assert getattr(built, key) == default
    config = resolve(DemoConfig(algorithm=algorithm, **{key: value}))
    assert getattr(build(stage, policy_settings(config, Path("rm"))), key) == value


def test_positive_weight_reaches_the_grpo_stage():
    default = build(grpo.GRPOConfig, policy_settings(resolve(DemoConfig()), Path("rm")))
    assert default.grpo.positive_weight == 1.0
    config = resolve(DemoConfig(positive_weight=0.2))
    assert build(grpo.GRPOConfig, policy_settings(config, Path("rm"))).grpo.positive_weight == 0.2


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_held_out_openings_decode_in_one_pass(algorithm):
    config = resolve(DemoConfig(algorithm=algorithm, eval_prompts=48, batch_size=8))
    stage = {"ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[algorithm]
    built = build(stage, policy_settings(config, Path("rm")))
    assert (built.data.max_eval_rows, built.eval_batch_size, built.train.batch_size) == (48, 48, 8)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_eval_samples_per_prompt_reaches_the_stage(algorithm):
    """One continuation per opening unless asked (4 costs ~1.1 min more on a first run)."""
    stage = {"ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[algorithm]
    for quick in (False, True):
        config = resolve(DemoConfig(algorithm=algorithm, quick=quick))
        assert build(stage, policy_settings(config, Path("rm"))).eval_samples_per_prompt == 1
    given = resolve(DemoConfig(algorithm=algorithm, eval_samples_per_prompt=4))
    assert build(stage, policy_settings(given, Path("rm"))).eval_samples_per_prompt == 4


def test_report_pairs_the_first_continuation_of_each_opening():
    """With several continuations per opening the report shows each opening once: its sample 0
    before and after (rows without ``sample``, from before the key, count as sample 0)."""
    def rows(tag):
        return [{"prompt": p, "sample": k, "response": f"{tag}{p}{k}", "score": float(k)}
                for p in "abc" for k in range(2)]
    pairs = report_samples(rows("b"), rows("a")[2:], count=8)
    assert [(s["prompt"], s["before"], s["after"]) for s in pairs] == [
        ("b", "bb0", "ab0"), ("c", "bc0", "ac0")]
    assert len(report_samples(rows("b"), rows("a"), count=2)) == 2
    old = [{"prompt": "a", "response": "x", "score": 1.0}]
    assert report_samples(old, old)[0]["after"] == "x"


def test_reward_model_reads_rm_max_length_tokens():
    built = build(reward.RMConfig, {"output_dir": "x",
                                    **reward_model_settings(resolve(DemoConfig(rm_max_length=64)))})
    assert built.data.max_length == 64


def test_unknown_algorithm_is_a_config_error():
    with pytest.raises(ConfigError, match="algorithm"):
        DemoConfig(algorithm="dpo")


def test_a_value_the_user_gave_wins_even_where_it_equals_a_default():
    """`--lang zh algorithm=ppo` ran GRPO (zh's default) while keys at their defaults were
    treated as unset: a given value equal to the English default must still be kept."""
    zh = resolve(DemoConfig(lang="zh", algorithm="ppo", policy="smollm2-135m-instruct", rm_steps=80))
    assert (zh.algorithm, zh.policy, zh.rm_steps) == ("ppo", "smollm2-135m-instruct", 80)
    assert zh.reward_backbone == "gemma3-270m"  # what was not given comes from the language
    quick = resolve(DemoConfig(quick=True, lora=True, iterations=30))
    assert (quick.lora, quick.iterations, quick.policy) == (True, 30, "tiny-llama")


def test_every_key_a_language_or_quick_sets_is_unset_by_default():
    unset = {f.name for f in dataclasses.fields(DemoConfig) if f.default is None}
    assert set(ENGLISH) == unset
    for spec in LANGUAGES.values():
        assert set(spec["defaults"]) <= unset
    assert set(QUICK) <= unset
    resolved = resolve(DemoConfig(lang="zh", quick=True))
    assert all(getattr(resolved, name) is not None for name in unset)


def test_a_bad_value_is_still_refused_where_a_key_may_be_unset():
    with pytest.raises(ConfigError, match="rm_steps"):
        DemoConfig(rm_steps=0)


def test_distinct_2_is_the_mean_over_the_draws_and_shares_count_every_row():
    """Two openings, two draws. Draw 0: "a b c" and "a b d" → bigrams ab bc ab bd, 3 distinct
    of 4 = 0.75; draw 1: "x y" and "y x" → xy yx, 2 of 2 = 1.0; mean 0.875 (all four texts
    together: ab bc ab bd xy yx, 5 of 6). Positive: 3 of the 4 rows."""
    rows = [{"prompt": p, "sample": k, "response": text, "score": score, "kl": 1.0, "length": 3}
            for p, k, text, score in (("p", 0, "a b c", 1.0), ("q", 0, "a b d", -1.0),
                                      ("p", 1, "x y", 0.5), ("q", 1, "y x", 0.2))]
    summary = summarize(rows)
    assert summary["distinct_2"] == pytest.approx(0.875)
    assert summary["positive_share"] == 0.75
    one = [dict(r, sample=0) for r in rows[:2]]
    assert summarize(one)["distinct_2"] == 0.75
    assert summarize([{k: v for k, v in r.items() if k != "sample"} for r in rows[:2]]) == \
        summarize(one)  # rows written before the key: one draw


def test_sample_from_reaches_the_grpo_stage_and_needs_kl_coef_0():
    default = build(grpo.GRPOConfig, policy_settings(resolve(DemoConfig()), Path("rm")))
    assert default.grpo.sample_from == "policy"
    config = resolve(DemoConfig(sample_from="reference", advantage="raft", kl_coef=0.0))
    built = build(grpo.GRPOConfig, policy_settings(config, Path("rm")))
    assert built.from_reference and (built.grpo.beta, built.grpo.kl_coef) == (0.0, 0.0)
    with pytest.raises(ConfigError, match=r"kl_coef=0.07 is invalid: expected 0 with "
                                          r"sample_from=reference"):
        resolve(DemoConfig(sample_from="reference"))  # the English default kl_coef 0.07
