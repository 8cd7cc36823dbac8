"""PPO stage on tiny-llama: the score rises, EOS/padding never leak, both critic layouts,
adapter reference == frozen copy, resume == uninterrupted. The math itself: tests/ops."""
import json
import shutil

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data import PromptExample
from rlhfkit.models import ModelLoadError, load_tokenizer
from rlhfkit.online import loop, ppo
from rlhfkit.online import rollout as rollouts
from rlhfkit.online.rewards import (
    FunctionReward,
    RewardError,
    RewardSources,
    char_share,
    compressibility,
)
from rlhfkit.online.roles import build_roles
from rlhfkit.trainers import common

TINY = "examples/ppo_tiny.yaml"
TIMING = ("time_", "tokens_per_second")


def config(repo_root, out, *overrides):
    return load_config(ppo.PPOConfig, str(repo_root / TINY),
                       [f"output_dir={out}", f"data.train_path={repo_root}/data/tiny/prompts.jsonl",
                        *overrides])


def setup(cfg, iterations=2):
    run = common.start_run(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    roles = build_roles(run, cfg, tokenizer, iterations)
    return run, tokenizer, roles


PROMPTS = ["One of the best", "You can't even tell if this film", "The plot", "A"]


def tiny_rollout(run, tokenizer, roles, cfg):
    pool = loop.encode_prompts([PromptExample((("user", p),)) for p in PROMPTS], tokenizer,
                              cfg.data)
    loop.seed_sampling(0, 1, 0)
    return pool, loop.generate_for(run, roles, cfg, tokenizer, pool.ids)


# ----------------------------------------------------------------------------- the example
def test_tiny_example_score_rises_and_writes_artefacts(repo_root, tmp_path, on_device):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny"
    ppo.run(config(repo_root, out, *on_device))
    rows = common.read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    first, last = rows[0]["score_mean"], sum(r["score_mean"] for r in rows[-3:]) / 3
    assert last > first + 0.15, (first, last)
    for key in ("score_mean", "score_std", "reward_mean", "kl_mean", "entropy_mean",
                "response_length_mean", "eos_share", "actor_loss", "critic_loss", "clipfrac",
                "approx_kl", "explained_variance", "advantage_mean", "advantage_std",
                "time_generate", "time_score", "time_update", "tokens_per_second", "kl_coef"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert all(abs(r["kl_mean"]) < 50 for r in rows)  # finite, not exploding
    # Rollout fidelity: old log-probs from the sampler (rollout.old_logprobs: auto), compared
    # with the first update's forward (its minibatch: 8 of 16 rows); temperature 0.1.
    assert all(r["fidelity_tokens"] > 0 and r["fidelity_abs_mean"] <= r["fidelity_abs_max"] < 1e-3
               and r["fidelity_share_over_0.1"] == 0.0 for r in rows)
    AutoModelForCausalLM.from_pretrained(out / "final")
    token_rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert token_rows and {"iteration", "prompt", "tokens", "kl", "values", "advantages",
                           "score"} <= set(token_rows[0])
    assert all(len(r["tokens"]) == len(r["kl"]) == len(r["values"]) == len(r["advantages"])
               == len(r.get("fidelity", r["kl"])) for r in token_rows)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {"iteration", "prompt", "response", "score"} <= set(samples[0])


# ----------------------------------------------------------------------------- masks and leaks
def test_response_mask_stops_after_first_eos(device):
    eos = 2
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]], device=device)
    mask = rollouts.response_mask_from(ids, eos)
    assert mask.tolist() == [[True, True, True, False, False], [True, True, False, False, False],
                             [True] * 5]


def test_rollout_layout_and_eos_mask(repo_root, tmp_path, on_device):
    cfg = config(repo_root, tmp_path, *on_device)
    run, tokenizer, roles = setup(cfg)
    pool, rollout = tiny_rollout(run, tokenizer, roles, cfg)
    P = rollout.prompt_width
    assert P == max(len(ids) for ids in pool.ids)
    for row, ids in enumerate(pool.ids):  # left-padded prompt, response from column P on
        assert rollout.input_ids[row, P - len(ids):P].tolist() == ids
        assert not rollout.attention_mask[row, :P - len(ids)].any()
    assert rollout.response_mask.shape == (len(PROMPTS), rollout.input_ids.shape[1] - P)
    assert torch.equal(rollout.attention_mask[:, P:], rollout.response_mask)


def leak_batch(run, tokenizer, roles, cfg):
    """A scored batch whose row 0 ends with EOS in the middle of the response."""
    pool, rollout = tiny_rollout(run, tokenizer, roles, cfg)
    P = rollout.prompt_width
    ids = rollout.input_ids.clone()
    ids[0, P + 2] = tokenizer.eos_token_id  # EOS at response position 2: positions 3.. are out
    mask = rollouts.response_mask_from(ids[:, P:], tokenizer.eos_token_id)
    rollout = rollouts.Rollout(ids, torch.cat([rollout.attention_mask[:, :P], mask], 1), mask, P)
    scored = loop.score_rollout(run, roles, cfg, tokenizer, rollout, PROMPTS)
    ended = rollouts.ended_with_eos(rollout, tokenizer.eos_token_id)
    batch, _, _ = ppo.rewards_and_advantages(run, cfg, rollout, scored, 0.05, ended)
    return batch


def losses(roles, cfg, batch):
    n_tokens = batch.rollout.response_mask.sum()
    actor, critic, _ = ppo.minibatch_losses(roles, cfg, batch, n_tokens)
    return torch.stack([actor.loss, critic.loss, actor.clipfrac, actor.approx_kl])


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_padding_and_after_eos_never_leak(repo_root, tmp_path, layout, on_device):
    """Tokens after EOS, prompt padding tokens and garbage in every masked position of the
    old log-probs, values, advantages and returns leave the losses exactly as they were."""
    cfg = config(repo_root, tmp_path, *on_device, f"critic.layout={layout}")
    run, tokenizer, roles = setup(cfg)
    batch = leak_batch(run, tokenizer, roles, cfg)
    reference = losses(roles, cfg, batch)
    r, P = batch.rollout, batch.rollout.prompt_width
    ids = r.input_ids.clone()
    ids[:, P:][~r.response_mask] = 1234  # after EOS
    ids[:, :P][~r.attention_mask[:, :P]] = 4321  # prompt padding
    assert (~r.response_mask).any() and (~r.attention_mask[:, :P]).any()
    garbage = [torch.where(r.response_mask, t, torch.full_like(t, 1e6))
               for t in (batch.logprobs, batch.values, batch.advantages, batch.returns)]
    poisoned = ppo.PPOBatch(rollouts.Rollout(ids, r.attention_mask, r.response_mask, P), *garbage)
    assert torch.allclose(losses(roles, cfg, poisoned), reference, atol=1e-6, rtol=1e-5)


def test_micro_batches_equal_one_pass(repo_root, tmp_path, on_device):
    """Accumulating 2 micro-batches of 2 rows == one pass over 4 rows: same losses and same
    gradient norms of both models (token-count normalisation; weights after Adam's first step
    are not compared: it moves every weight by ±lr, so float noise in ~0 gradients flips signs)."""
    results = []
    for micro in (0, 2):
        cfg = config(repo_root, tmp_path / str(micro), *on_device,
                     f"train.micro_batch_size={micro}")
        run, tokenizer, roles = setup(cfg)
        batch = leak_batch(run, tokenizer, roles, cfg)  # rows of unequal length (an early EOS)
        rows = torch.arange(len(PROMPTS), device=run.device)  # as update_epochs hands them
        stats = ppo.minibatch_step(run, roles, cfg, batch, rows)
        results.append(stats)
    one, acc = results
    for key in ("actor_loss", "critic_loss", "approx_kl", "actor_grad_norm", "critic_grad_norm"):
        assert acc[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key


# ----------------------------------------------------------------------------- roles
@pytest.mark.parametrize("layout,lora", [("separate", False), ("shared", False),
                                         ("separate", True)])
def test_critic_layouts_run_and_update(repo_root, tmp_path, layout, lora, on_device):
    """One iteration moves the policy and the critic (value model, or the shared value head);
    with LoRA both the policy and the separate critic train adapters."""
    cfg = config(repo_root, tmp_path, *on_device, f"critic.layout={layout}", "ppo.ppo_epochs=1",
                 "ppo.minibatches=1", "train.batch_size=4", f"model.lora.enabled={lora}",
                 "model.lora.r=4")
    run, tokenizer, roles = setup(cfg, iterations=1)
    critic = roles.critic if layout == "separate" else run.accelerator.unwrap_model(
        roles.actor).value_head
    assert (roles.critic is None) == (layout == "shared")
    policy_before = [p.detach().clone() for p in roles.policy(run.accelerator).parameters()]
    critic_before = [p.detach().clone() for p in critic.parameters()]
    pool = loop.encode_prompts([PromptExample((("user", p),)) for p in PROMPTS], tokenizer,
                              cfg.data)
    metrics, _, _ = ppo.ppo_iteration(run, roles, cfg, tokenizer, pool, 1, 0.05)
    assert metrics["critic_loss"] > 0 and metrics["actor_grad_norm"] > 0
    assert len(roles.optimizers) == (2 if layout == "separate" else 1)
    changed = lambda before, module: any(not torch.equal(b, p) for b, p in
                                         zip(before, module.parameters()))
    assert changed(policy_before, roles.policy(run.accelerator))
    assert changed(critic_before, critic)


def test_fresh_critic_starts_at_zero_and_encoder_critic_is_refused(repo_root, tmp_path,
                                                                   tiny_bert, on_device):
    """A critic not initialised from a reward model gets a zero head (V = 0); an encoder RM
    (no per-token values, another tokenizer) cannot be the critic: a clear error says why."""
    cfg = config(repo_root, tmp_path, *on_device, "train.batch_size=4")
    run, tokenizer, roles = setup(cfg, iterations=1)
    ids = torch.tensor([tokenizer("The plot was fine")["input_ids"]], device=run.device)
    with torch.no_grad():
        values = roles.critic(ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.equal(values, torch.zeros_like(values))
    with pytest.raises(ModelLoadError, match="critic.model_name"):
        setup(config(repo_root, tmp_path / "bert", *on_device, f"critic.model_name={tiny_bert}"))


def test_adapter_reference_equals_frozen_copy(repo_root, tmp_path, on_device):
    """ref_logprobs from the LoRA policy with its adapter off == from a frozen initial copy,
    while the policy itself has moved away from both."""
    lora = ("model.lora.enabled=true", "model.lora.r=4")
    scored = {}
    for mode in ("adapter", "copy"):
        cfg = config(repo_root, tmp_path / mode, *on_device, *lora, f"ppo.reference={mode}")
        run, tokenizer, roles = setup(cfg)
        assert (roles.ref_policy is None) == (mode == "adapter")
        with torch.no_grad():  # move the policy: LoRA B starts at 0, i.e. policy == reference
            for name, p in roles.policy(run.accelerator).named_parameters():
                if "lora_B" in name:
                    seeded = torch.Generator(p.device).manual_seed(0)
                    p.copy_(torch.randn_like(p, generator=seeded))
        _, rollout = tiny_rollout(run, tokenizer, roles, cfg)
        scored[mode] = loop.score_rollout(run, roles, cfg, tokenizer, rollout, PROMPTS)
    mask = scored["copy"].logprobs != 0
    assert torch.allclose(scored["adapter"].ref_logprobs, scored["copy"].ref_logprobs, atol=1e-5)
    assert not torch.allclose(scored["copy"].logprobs[mask], scored["copy"].ref_logprobs[mask],
                              atol=1e-3)


# ----------------------------------------------------------------------------- resume
def test_resume_equals_uninterrupted(repo_root, tmp_path, on_device):
    """A run that dies during iteration 3 (checkpoint at 2) and resumes gives the same metrics,
    samples and per-token rollouts, adaptive-KL state included; running again into the same
    output_dir without resume=true replaces the logs rather than appending."""
    args = (*on_device, "train.max_steps=3", "train.save_every=2", "sample_every=1",
            "train.batch_size=8", "rollout.max_new_tokens=6", "ppo.kl_controller=adaptive",
            "ppo.target_kl=0.1", "ppo.kl_horizon=50", "data.eval_fraction=0.25")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    ppo.run(config(repo_root, whole, *args))
    ppo.run(config(repo_root, whole, *args))  # a rerun into the same dir starts its logs afresh
    # The crash: a copy of the run as it was during iteration 3 — no checkpoint-3, no final/,
    # nothing logged for iteration 3.
    shutil.copytree(whole, broken)
    shutil.rmtree(broken / "checkpoint-3")
    shutil.rmtree(broken / "final")
    for name in ("metrics.jsonl", "samples.jsonl", "rollouts.jsonl", "eval.jsonl"):
        rows = (broken / name).read_text().splitlines()
        kept = [r for r in rows if json.loads(r).get("step", json.loads(r).get("iteration")) <= 2]
        assert len(kept) < len(rows)
        (broken / name).write_text("".join(r + "\n" for r in kept))
    ppo.run(config(repo_root, broken, *args, "resume=true"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]
    a, b = strip(common.read_metrics(whole)), strip(common.read_metrics(broken))
    assert a == b and [r["step"] for r in a] == [0, 1, 2, 3]  # 0: the evaluation before
    assert len({r["kl_coef"] for r in a[1:]}) == 3  # the adaptive controller moved every iteration
    for name in ("samples.jsonl", "rollouts.jsonl", "eval.jsonl"):
        assert (whole / name).read_text() == (broken / name).read_text(), name
    evaluated = [json.loads(row)["iteration"]
                 for row in (whole / "eval.jsonl").read_text().splitlines()]
    assert sorted(set(evaluated)) == [0, 3] and evaluated.count(0) == evaluated.count(3)


# ----------------------------------------------------------------------------- config, rewards
def test_config_errors(repo_root, tmp_path):
    with pytest.raises(ConfigError, match="reward.model_path"):
        config(repo_root, tmp_path, "reward.function=")
    with pytest.raises(ConfigError, match="ppo.kl_estimator"):
        config(repo_root, tmp_path, "ppo.kl_estimator=k9")
    with pytest.raises(ConfigError, match="ppo.reference"):
        config(repo_root, tmp_path, "ppo.reference=adapter")
    with pytest.raises(ConfigError, match="train.batch_size"):
        config(repo_root, tmp_path, "train.batch_size=6", "ppo.minibatches=4")


def test_reward_function_loading():
    reward = FunctionReward("rlhfkit.online.rewards:char_share", {"chars": "a"})
    assert reward(["p", "p"], ["aab", ""]).tolist() == pytest.approx([2 / 3, 0.0])
    assert char_share([""], ["a b"]) == [0.5]
    for spec in ("no_colon", "rlhfkit.nope:f", "rlhfkit.online.rewards:nope"):
        with pytest.raises(RewardError):
            FunctionReward(spec)


def test_reward_sources_sum_with_weights():
    sources = RewardSources([("model", 2.0, lambda p, r: torch.tensor([1.0, -1.0])),
                             ("function", 0.5, lambda p, r: torch.tensor([4.0, 0.0]))])
    total, parts = sources.score(["a", "b"], ["x", "y"])
    assert total.tolist() == [4.0, -2.0] and set(parts) == {"model", "function"}
    with pytest.raises(RewardError):
        RewardSources([])
    varied, repeated = compressibility(["", ""], ["a quick brown fox", "ab" * 20])
    assert varied < 0.1 < 0.5 < repeated


# ----------------------------------------------------------------------------- rollout fidelity
def test_old_logprobs_come_from_the_sampler_where_they_equal_the_trainers(repo_root, tmp_path,
                                                                          on_device):
    """rollout.old_logprobs: auto on float32 with a separate critic: no policy forward in
    scoring, the old log-probs and entropy are the sampler's, equal to the forward's to 1e-4
    (temperature 0.1: ×10 the float32 noise of test_generate.py's 1e-5). The shared layout still
    runs the forward (its values come from it). forward, a TIS cap, bf16 weights or bf16
    autocast keep the forward."""
    cfg = config(repo_root, tmp_path, *on_device)
    run, tokenizer, roles = setup(cfg)
    assert loop.sampler_stands_for_trainer(run, cfg)
    _, rollout = tiny_rollout(run, tokenizer, roles, cfg)
    sampled = loop.score_rollout(run, roles, cfg, tokenizer, rollout, PROMPTS, use_sampler=True)
    forward = loop.score_rollout(run, roles, cfg, tokenizer, rollout, PROMPTS)
    assert sampled.from_sampler and not forward.from_sampler
    assert torch.equal(sampled.logprobs, rollout.sampler_logprobs)
    mask = rollout.response_mask
    for name in ("logprobs", "entropy"):
        torch.testing.assert_close(getattr(sampled, name)[mask], getattr(forward, name)[mask],
                                   atol=1e-4, rtol=0)
    for name in ("ref_logprobs", "values", "scores"):
        assert torch.equal(getattr(sampled, name), getattr(forward, name)), name
    shared = config(repo_root, tmp_path / "shared", *on_device, "critic.layout=shared")
    run_s, _, roles_s = setup(shared)
    assert not loop.score_rollout(run_s, roles_s, shared, tokenizer, rollout, PROMPTS,
                                  use_sampler=True).from_sampler
    for override in ("rollout.old_logprobs=forward", "rollout.tis_cap=2",
                     "train.mixed_precision=bf16"):
        assert not loop.sampler_stands_for_trainer(run, config(repo_root, tmp_path, override))
    bf16_run = type("Run", (), {"dtype": torch.bfloat16})()
    assert not loop.sampler_stands_for_trainer(bf16_run, cfg)


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_evaluation_decodes_in_wide_passes_without_policy_or_critic_forward(repo_root, tmp_path,
                                                                            layout, on_device):
    """eval_batch_size=4, train.batch_size=2: the 4 held-out prompts are decoded in one pass
    (the responses of one generate call under the evaluation's seed), scored in two passes of 2;
    the KL is the sampler's log-probs against the reference's, equal to the trainer forward's
    KL to 1e-4 per token (12 tokens: 2e-3 per response), and the scores are the forward's.
    Neither the actor (nor its shared value head) nor the critic runs: one forward, the
    reference's, per scoring pass."""
    cfg = config(repo_root, tmp_path, *on_device, "eval_batch_size=4", "train.batch_size=2",
                 f"critic.layout={layout}")
    run, tokenizer, roles = setup(cfg)
    pool = loop.encode_prompts([PromptExample((("user", p),)) for p in PROMPTS], tokenizer,
                               cfg.data)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1))
             for m in (roles.actor, roles.critic) if m is not None]
    metrics, rows = loop.evaluate(run, roles, cfg, tokenizer, pool, 0)
    for hook in hooks:
        hook.remove()
    assert calls == [] and len(rows) == len(PROMPTS)
    loop.seed_sampling(cfg.train.seed + 1, 0, run.rank)
    rollout = loop.generate_for(run, roles, cfg, tokenizer, pool.ids)  # one pass of 4
    forward = loop.score_rollout(run, roles, cfg, tokenizer, rollout, pool.texts)
    assert not forward.from_sampler
    assert [r["response"] for r in rows] == forward.responses
    kl = (forward.logprobs - forward.ref_logprobs).where(rollout.response_mask, 0.0).sum(1)
    torch.testing.assert_close(torch.tensor([r["kl"] for r in rows]), kl.cpu(), atol=2e-3,
                               rtol=0)
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), forward.scores.cpu())
    assert metrics["eval_kl_mean"] == pytest.approx(sum(r["kl"] for r in rows) / 4)


def test_evaluation_samples_several_continuations_per_prompt(repo_root, tmp_path, on_device):
    """eval_samples_per_prompt=3: each of the 4 held-out prompts gets 3 rows (samples 0, 1, 2,
    side by side), the 12 continuations of one generate call over the prompts repeated 3 times
    (eval_batch_size=4 prompts a pass); the means are over all 12 rows. With 1 (the default)
    the rows are those of the prompts alone, as before."""
    cfg = config(repo_root, tmp_path, *on_device, "eval_batch_size=4", "train.batch_size=2",
                 "eval_samples_per_prompt=3")
    run, tokenizer, roles = setup(cfg)
    pool = loop.encode_prompts([PromptExample((("user", p),)) for p in PROMPTS], tokenizer,
                               cfg.data)
    metrics, rows = loop.evaluate(run, roles, cfg, tokenizer, pool, 0)
    assert [(r["prompt"], r["sample"]) for r in rows] == [
        (text, k) for text in pool.texts for k in range(3)]
    loop.seed_sampling(cfg.train.seed + 1, 0, run.rank)
    rollout = loop.generate_for(run, roles, cfg, tokenizer,
                                [ids for ids in pool.ids for _ in range(3)])  # one pass of 12
    assert [r["response"] for r in rows] == rollouts.decode_responses(tokenizer, rollout)
    assert len({r["response"] for r in rows}) > len(PROMPTS)  # samples, not copies
    assert metrics["eval_kl_mean"] == pytest.approx(sum(r["kl"] for r in rows) / 12)
    assert metrics["eval_score_mean"] == pytest.approx(sum(r["score"] for r in rows) / 12)
    one = config(repo_root, tmp_path / "one", *on_device, "eval_batch_size=4",
                 "train.batch_size=2")
    _, single = loop.evaluate(run, roles, one, tokenizer, pool, 0)
    assert [(r["prompt"], r["sample"]) for r in single] == [(t, 0) for t in pool.texts]


def test_truncated_importance_sampling_weights_the_policy_gradient(repo_root, tmp_path,
                                                                   on_device):
    """rollout.tis_cap reaches the actor loss: at cap 1e-6 each token's surrogate is weighted
    min(π_old/π_sampler, 1e-6) = 1e-6, so the actor's gradient shrinks ~1e6-fold; at cap 1e6
    the weight is the ratio itself, ≈ 1 (the two agree to ~1e-5), and the gradient is the
    unweighted one. The critic is untouched. The forward runs for the old log-probs."""
    results = {}
    for cap in (0, 1e-6, 1e6):
        cfg = config(repo_root, tmp_path / str(cap), *on_device, "ppo.ppo_epochs=1",
                     "ppo.minibatches=1", "train.batch_size=4", f"rollout.tis_cap={cap}")
        run, tokenizer, roles = setup(cfg, iterations=1)
        assert loop.sampler_stands_for_trainer(run, cfg) == (cap == 0)
        pool = loop.encode_prompts([PromptExample((("user", p),)) for p in PROMPTS], tokenizer,
                                  cfg.data)
        results[cap], _, _ = ppo.ppo_iteration(run, roles, cfg, tokenizer, pool, 1, 0.05)
    plain, tiny, huge = results[0], results[1e-6], results[1e6]
    assert plain["actor_grad_norm"] > 1e-3
    assert tiny["actor_grad_norm"] < 1e-5 * plain["actor_grad_norm"]
    assert huge["actor_grad_norm"] == pytest.approx(plain["actor_grad_norm"], rel=1e-3)
    assert tiny["critic_grad_norm"] == pytest.approx(plain["critic_grad_norm"], rel=1e-3)
