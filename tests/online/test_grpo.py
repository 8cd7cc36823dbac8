"""GRPO stage on tiny-llama: the score rises, groups are consecutive rows of one prompt, the
on-policy shortcut (no old-log-prob forward) equals the straightforward path, LoRA with the
adapter as reference, resume == uninterrupted. The math itself: tests/ops/test_grpo_ops.py."""
import json
import shutil

import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.data import load_splits
from rlhfkit.models import load_tokenizer
from rlhfkit.models.forward import response_logprobs
from rlhfkit.models.packing import can_pack
from rlhfkit.online import grpo, grpo_train, loop
from rlhfkit.online import rollout as rollouts
from rlhfkit.online.rewards import RewardSources
from rlhfkit.online.roles import build_roles
from rlhfkit.ops.grpo import grpo_advantages
from rlhfkit.trainers import common

TINY = "examples/grpo_tiny.yaml"
TIMING = ("time_", "tokens_per_second")


def config(repo_root, out, *overrides):
    return load_config(grpo.GRPOConfig, str(repo_root / TINY),
                       [f"output_dir={out}", f"data.train_path={repo_root}/data/tiny/prompts.jsonl",
                        *overrides])


def setup(cfg):
    run = common.start_run(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    roles = build_roles(run, cfg, tokenizer, 2)
    pool = loop.encode_prompts(load_splits(cfg.data, "prompt", cfg.train.seed)[0], tokenizer,
                              cfg.data)
    return run, tokenizer, roles, pool


def test_tiny_example_score_rises_and_writes_artefacts(repo_root, tmp_path, on_device):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny"
    grpo.run(config(repo_root, out, *on_device))
    rows = common.read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    first, last = rows[0]["score_mean"], sum(r["score_mean"] for r in rows[-3:]) / 3
    assert last > first + 0.15, (first, last)
    for key in ("score_mean", "score_std", "score_group_std_mean", "zero_std_group_share",
                "advantage_abs_mean", "kl_mean", "kl_token_mean", "loss", "clipfrac",
                "grad_norm", "eos_share", "response_length_mean", "time_generate",
                "time_score", "time_update", "tokens_per_second", "lr", "entropy_mean",
                "entropy_bonus"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["kl_mean"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    # Rollout fidelity, on-policy: the update's own forward against the sampler's log-probs
    # (at temperature 0.1, so ×10 the float32 noise of test_generate.py's 1e-5).
    assert all(r["fidelity_tokens"] > 0 and r["fidelity_abs_max"] < 1e-3
               and r["fidelity_share_over_0.1"] == 0.0 for r in rows)
    assert rows[-1]["kl_mean"] > 0.01 and all(r["clipfrac"] == 0.0 for r in rows)  # on-policy
    AutoModelForCausalLM.from_pretrained(out / "final")
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {"iteration", "prompt", "response", "score", "advantage"} <= set(samples[0])
    tokens = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all(len(r["tokens"]) == len(r["kl"]) for r in tokens)


def test_groups_are_one_prompt_each_and_advantages_centre_within_them(repo_root, tmp_path,
                                                                       on_device):
    cfg = config(repo_root, tmp_path, *on_device, "train.batch_size=3",
                 "grpo.num_generations=4")
    run, tokenizer, roles, pool = setup(cfg)
    seen = {}

    def remember(run_, roles_, config_, tokenizer_, prompt_ids, **kw):
        seen["prompt_ids"] = prompt_ids
        return loop.generate_for(run_, roles_, config_, tokenizer_, prompt_ids, **kw)

    original, grpo.generate_for = grpo.generate_for, remember
    original_update = grpo.grpo_update

    def capture(run_, roles_, config_, batch, iteration, beta):
        seen["advantages"] = batch.advantages
        return original_update(run_, roles_, config_, batch, iteration, beta)

    grpo.grpo_update = capture
    try:
        metrics, _, _ = grpo.grpo_iteration(run, roles, cfg, tokenizer, pool, 1)
    finally:
        grpo.generate_for, grpo.grpo_update = original, original_update
    ids = seen["prompt_ids"]
    assert len(ids) == 12 and all(ids[4 * g] == ids[4 * g + k] for g in range(3) for k in range(4))
    assert len({tuple(ids[4 * g]) for g in range(3)}) == 3
    sums = seen["advantages"].view(3, 4).sum(dim=1)
    torch.testing.assert_close(sums, torch.zeros(3, device=sums.device), atol=1e-4, rtol=0)
    assert 0.0 <= metrics["zero_std_group_share"] <= 1.0


def test_missing_eos_penalty_then_reward_clip_shape_the_scores(repo_root, tmp_path,
                                                               monkeypatch, on_device):
    """reward.missing_eos_penalty, then reward.reward_clip, as PPO applies them, before the
    group advantages. 2 prompts × 4 responses cut at 2 tokens (none ends with EOS), scores
    s → clip(s − 1, ±2):  [3, 0.5, −4, 1] → [2, −0.5, −2, 0];  [0, 2.5, −1.5, 1.5] →
    [−1, 1.5, −2, 0.5]. The logged score_mean stays the sources' own mean (0.375), as PPO's."""
    cfg = config(repo_root, tmp_path, *on_device, "train.batch_size=2", "grpo.num_generations=4",
                 "rollout.max_new_tokens=2", "reward.reward_clip=2",
                 "reward.missing_eos_penalty=1")
    run, tokenizer, roles, pool = setup(cfg)
    raw = [3.0, 0.5, -4.0, 1.0, 0.0, 2.5, -1.5, 1.5]
    roles.reward = RewardSources([("function", 1.0, lambda p, r: torch.tensor(raw))])
    seen = {}

    def remember(run_, roles_, config_, tokenizer_, prompt_ids, **kw):
        seen["rollout"] = loop.generate_for(run_, roles_, config_, tokenizer_, prompt_ids, **kw)
        return seen["rollout"]

    def record(scores, *args):
        seen["scores"] = scores
        return grpo_advantages(scores, *args)

    monkeypatch.setattr(grpo, "generate_for", remember)
    monkeypatch.setitem(grpo.ADVANTAGES, "grpo", record)
    metrics, _, _ = grpo.grpo_iteration(run, roles, cfg, tokenizer, pool, 1)
    assert not rollouts.ended_with_eos(seen["rollout"], tokenizer.eos_token_id).any()
    assert seen["scores"].tolist() == [2.0, -0.5, -2.0, 0.0, -1.0, 1.5, -2.0, 0.5]
    assert metrics["score_mean"] == pytest.approx(0.375, abs=1e-7)


def test_on_policy_shortcut_equals_a_separate_old_logprob_forward(repo_root, tmp_path,
                                                                  on_device):
    """epochs = 1: no forward for the old log-probs; the update's own log-probs (returned for
    the KL metric) equal a separate no-grad forward before the update, to 1e-5. Both the
    update and the reference run packed (each group's prompt once); the separate forward is
    one row per response."""
    cfg = config(repo_root, tmp_path, *on_device, "rollout.max_new_tokens=6")
    assert not cfg.reuses_rollout and config(repo_root, tmp_path, "grpo.epochs=2").reuses_rollout
    run, tokenizer, roles, pool = setup(cfg)
    assert cfg.grpo.share_prompt and can_pack(roles.policy(run.accelerator))  # the packed path
    loop.seed_sampling(0, 1, 0)
    groups = [pool.ids[i] for i in range(2) for _ in range(4)]  # 2 prompts × 4 samples
    rollout = loop.generate_for(run, roles, cfg, tokenizer, groups)
    rows = torch.arange(8, device=run.device)  # as update_epochs hands them
    assert grpo_train.packed_rows(rollout, rows).input_ids.shape[0] == 2
    ref, old = grpo.score_group_rollout(run, roles, cfg, rollout)
    assert old is None
    P = rollout.prompt_width
    with torch.no_grad():
        separate = response_logprobs(roles.policy(run.accelerator), rollout.input_ids,
                                     rollout.attention_mask, rollout.sequence_response_mask,
                                     False, cfg.rollout.temperature).logprobs[:, P - 1:]
    before = [p.detach().clone() for p in roles.policy(run.accelerator).parameters()]
    batch = grpo_train.GRPOBatch(rollout, ref, None, torch.linspace(-1, 1, 8, device=run.device))
    stats, first_step = grpo_train.grpo_update(run, roles, cfg, batch, 1, cfg.grpo.beta)
    mask = rollout.response_mask
    assert first_step.rows.all()  # one update: every row seen at the rollout's weights
    torch.testing.assert_close(first_step.logprobs[mask], separate[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ref[mask], separate[mask], atol=1e-5, rtol=0)  # no update yet
    after = list(roles.policy(run.accelerator).parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert stats["grad_norm"] > 0


def test_entropy_bonus_packed_equals_unpacked_and_raises_the_entropy(repo_root, tmp_path,
                                                                     on_device):
    """grpo.entropy_coef: the trainer's entropy at each response token, packed (each group's
    prompt once) and one row per response, equals the sampler's; with zero advantages and no
    KL term, the bonus alone moves the weights, and the policy's entropy rises (without it,
    nothing moves)."""
    def mean_entropy(cfg, run, roles, rollout, rows):
        with torch.no_grad():
            _, entropy = grpo_train.policy_logprobs(run, roles, cfg, rollout, rows, with_entropy=True)
        return float(entropy[rollout.response_mask].mean()), entropy

    for coef, rises in ((0.0, False), (1.0, True)):
        cfg = config(repo_root, tmp_path, *on_device, "rollout.max_new_tokens=6", "grpo.beta=0",
                     f"grpo.entropy_coef={coef}", "train.learning_rate=1e-2")
        run, tokenizer, roles, pool = setup(cfg)
        loop.seed_sampling(0, 1, 0)
        rollout = loop.generate_for(run, roles, cfg, tokenizer,
                                    [pool.ids[i] for i in range(2) for _ in range(4)])
        rows, mask = torch.arange(8, device=run.device), rollout.response_mask
        before, packed = mean_entropy(cfg, run, roles, rollout, rows)
        unpacked_cfg = config(repo_root, tmp_path, *on_device, "rollout.max_new_tokens=6",
                              "grpo.share_prompt=false")
        _, unpacked = mean_entropy(unpacked_cfg, run, roles, rollout, rows)
        torch.testing.assert_close(packed[mask], unpacked[mask], atol=1e-4, rtol=0)
        torch.testing.assert_close(packed[mask], rollout.sampler_entropy[mask].float(),
                                   atol=1e-3, rtol=0)
        batch = grpo_train.GRPOBatch(rollout, torch.zeros_like(packed), None,
                               torch.zeros(8, device=run.device))
        stats, _ = grpo_train.grpo_update(run, roles, cfg, batch, 1, cfg.grpo.beta)
        after, _ = mean_entropy(cfg, run, roles, rollout, rows)
        if rises:
            assert stats["entropy_bonus"] == pytest.approx(before, abs=1e-4)
            assert stats["grad_norm"] > 0 and after > before + 1e-3, (before, after)
        else:
            assert stats["grad_norm"] == 0 and after == pytest.approx(before, abs=1e-6)


def test_lora_policy_with_adapter_reference_learns(repo_root, tmp_path, on_device):
    out = tmp_path / "lora"
    cfg = config(repo_root, out, *on_device, "model.lora.enabled=true", "train.max_steps=2",
                 "grpo.epochs=2", "grpo.minibatches=2")
    assert cfg.reference_mode == "adapter" and cfg.reuses_rollout
    grpo.run(cfg)
    rows = common.read_metrics(out)
    assert len(rows) == 2 and rows[-1]["kl_mean"] != 0.0
    assert any(r["clipfrac"] >= 0.0 for r in rows)


def test_final_interpolation_scales_the_final_adapter_not_the_checkpoint(repo_root, tmp_path,
                                                                        on_device):
    """final_interpolation η (WARP's LITI): final/ and the evaluation after hold the adapter's
    weight change × η (lora_B × η); training and the checkpoint (resume) are the trained
    policy's, the evaluation before is untouched."""
    from safetensors.torch import load_file

    args = (*on_device, "model.lora.enabled=true", "train.max_steps=2", "train.save_every=2",
            "data.eval_fraction=0.25", "train.learning_rate=1e-2")
    outs = {eta: tmp_path / f"eta{eta}" for eta in (1.0, 0.5)}
    for eta, out in outs.items():
        grpo.run(config(repo_root, out, *args, f"final_interpolation={eta}"))
    checkpoints = {e: load_file(str(o / "checkpoint-2" / "model.safetensors")) for e, o in outs.items()}
    for key, value in checkpoints[1.0].items():
        torch.testing.assert_close(checkpoints[0.5][key], value)
    finals = {e: load_file(str(o / "final" / "adapter" / "adapter_model.safetensors"))
              for e, o in outs.items()}
    lora_b = [k for k in finals[1.0] if "lora_B" in k]
    assert lora_b and any(finals[1.0][k].abs().sum() > 0 for k in lora_b)
    for key, value in finals[1.0].items():
        torch.testing.assert_close(finals[0.5][key], 0.5 * value if key in lora_b else value)
    evals = {e: [json.loads(r) for r in (o / "eval.jsonl").read_text().splitlines()]
             for e, o in outs.items()}
    before = lambda rows: [r for r in rows if r["iteration"] == 0]
    after = lambda rows: [r["kl"] for r in rows if r["iteration"] == 2]
    assert before(evals[0.5]) == before(evals[1.0])
    assert after(evals[0.5]) and after(evals[0.5]) != after(evals[1.0])


def test_final_average_is_the_mean_of_the_iterates_and_resumes_exactly(repo_root, tmp_path,
                                                                       on_device):
    """final_average_from=2 over 3 iterations: final/adapter holds the mean of the adapter's
    weight changes after iterations 2 and 3 (rank 2r), the checkpoints hold the trained policy
    (a run without averaging's), the evaluation after is the average's; a run resumed from
    checkpoint-2 averages the same iterates (they are in the checkpoint)."""
    from safetensors.torch import load_file

    args = (*on_device, "model.lora.enabled=true", "train.max_steps=3", "train.save_every=1",
            "data.eval_fraction=0.25", "train.learning_rate=1e-2")
    plain, avg, broken = tmp_path / "plain", tmp_path / "avg", tmp_path / "broken"
    grpo.run(config(repo_root, plain, *args))
    cfg = config(repo_root, avg, *args, "final_average_from=2")
    grpo.run(cfg)
    trained = {s: load_file(str(plain / f"checkpoint-{s}" / "model.safetensors")) for s in (2, 3)}
    for key, value in load_file(str(avg / "checkpoint-3" / "model.safetensors")).items():
        torch.testing.assert_close(value, trained[3][key])
    final = load_file(str(avg / "final" / "adapter" / "adapter_model.safetensors"))
    saved = json.loads((avg / "final" / "adapter" / "adapter_config.json").read_text())
    r, alpha = cfg.model.lora.r, cfg.model.lora.alpha
    assert (saved["r"], saved["lora_alpha"]) == (2 * r, 2 * alpha)
    a_keys = [k for k in trained[3] if ".lora_A.default." in k]
    assert a_keys
    for a_key in a_keys:
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        mean = sum(trained[s][b_key] @ trained[s][a_key] for s in (2, 3)) / 2
        name = a_key.removeprefix("policy.").replace(".default", "")
        got = final[name.replace(".lora_A.", ".lora_B.")] @ final[name]
        torch.testing.assert_close(got, mean, rtol=1e-5, atol=1e-6)
    after = lambda out: [json.loads(r)["kl"] for r in (out / "eval.jsonl").read_text().splitlines()
                         if json.loads(r)["iteration"] == 3]
    assert after(avg) and after(avg) != after(plain)
    shutil.copytree(avg, broken)
    shutil.rmtree(broken / "checkpoint-3")
    shutil.rmtree(broken / "final")
    grpo.run(config(repo_root, broken, *args, "final_average_from=2", "resume=true"))
    resumed = load_file(str(broken / "final" / "adapter" / "adapter_model.safetensors"))
    assert resumed.keys() == final.keys()
    for key, value in final.items():
        torch.testing.assert_close(resumed[key], value)


def test_final_average_is_refused_sharded(repo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "is_sharded", lambda run: True)
    with pytest.raises(ConfigError, match="final_average_from=2 is invalid"):
        grpo.run(config(repo_root, tmp_path / "sharded", "model.lora.enabled=true",
                        "final_average_from=2"))


def test_final_interpolation_of_a_full_model_is_refused_sharded(repo_root, tmp_path, monkeypatch):
    """Under FSDP a full model's parameters are shards and its reference copy whole: a clear
    config error before anything loads (LoRA, scaled in place, is allowed)."""
    monkeypatch.setattr(common, "is_sharded", lambda run: True)
    with pytest.raises(ConfigError, match="final_interpolation=0.5 is invalid"):
        grpo.run(config(repo_root, tmp_path / "full", "final_interpolation=0.5"))


def test_resume_equals_uninterrupted(repo_root, tmp_path, monkeypatch, on_device):
    """Resume gives the uninterrupted run's metrics, adaptive β included; the β the controller
    logs for an iteration is the one its loss used."""
    args = (*on_device, "train.max_steps=3", "train.save_every=2", "sample_every=1",
            "train.batch_size=4", "rollout.max_new_tokens=6", "data.eval_fraction=0.25",
            "grpo.kl_controller=adaptive", "grpo.target_kl=0.01", "grpo.kl_horizon=50")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    used = []
    original = grpo_train.grpo_loss
    monkeypatch.setattr(grpo_train, "grpo_loss",
                        lambda *a, **kw: used.append(a[6]) or original(*a, **kw))
    grpo.run(config(repo_root, whole, *args))
    monkeypatch.setattr(grpo_train, "grpo_loss", original)
    shutil.copytree(whole, broken)
    shutil.rmtree(broken / "checkpoint-3")
    shutil.rmtree(broken / "final")
    for name in ("metrics.jsonl", "samples.jsonl", "rollouts.jsonl", "eval.jsonl"):
        rows = (broken / name).read_text().splitlines()
        kept = [r for r in rows if json.loads(r).get("step", json.loads(r).get("iteration")) <= 2]
        (broken / name).write_text("".join(r + "\n" for r in kept))
    grpo.run(config(repo_root, broken, *args, "resume=true"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]
    a, b = strip(common.read_metrics(whole)), strip(common.read_metrics(broken))
    assert a == b and [r["step"] for r in a] == [0, 1, 2, 3]
    assert "eval_score_mean" in a[0] and "eval_kl_mean" in a[-1]
    betas = [r["beta"] for r in a[1:]]
    assert used == betas and betas[0] == 0.04 and len(set(betas)) == 3
    # Iteration 1 samples from the reference itself (KL ≈ 0 < target): e = −0.2 over 4 × 4
    # responses, β ← β · (1 − 0.2 · 16 / 50)
    assert betas[1] == pytest.approx(0.04 * (1 - 0.2 * 16 / 50))
    assert a[1]["kl_coef"] == 0  # the coefficient not in use stays 0
    for name in ("samples.jsonl", "rollouts.jsonl", "eval.jsonl"):
        assert (whole / name).read_text() == (broken / name).read_text(), name


def test_token_cap_cuts_whole_groups_and_equals_one_pass(repo_root, tmp_path, monkeypatch,
                                                         on_device):
    """grpo.max_forward_tokens cuts an update into forwards of whole groups (cap 1: one group,
    G consecutive rows, a forward): the same loss and gradient norm as one pass (cap 0), to
    float summation order."""
    pieces = []
    accumulate = common.accumulate_step

    def recording(run, models, optimizers, schedulers, chunks, *rest, **kw):
        pieces.append([sorted(c.tolist()) for c in chunks])
        return accumulate(run, models, optimizers, schedulers, chunks, *rest, **kw)

    monkeypatch.setattr(common, "accumulate_step", recording)
    args = (*on_device, "train.max_steps=2", "train.save_every=0", "data.eval_fraction=0")
    grpo.run(config(repo_root, tmp_path / "one", *args, "grpo.max_forward_tokens=0"))
    assert [len(p) for p in pieces] == [1, 1]
    pieces.clear()
    grpo.run(config(repo_root, tmp_path / "cut", *args, "grpo.max_forward_tokens=1"))
    assert [len(p) for p in pieces] == [8, 8]  # 8 prompts × 4 responses, one group a forward
    for update in pieces:
        assert [rows for rows in update] == [[4 * g + k for k in range(4)] for g in range(8)]
    # The first update: from there the weights differ in float rounding, and at temperature 0.1
    # the next rollout may sample other tokens (AdamW's first step moves every weight by ±lr).
    one, cut = (next(r for r in common.read_metrics(tmp_path / name) if "loss" in r)
                for name in ("one", "cut"))
    assert one["grad_norm"] > 0.1 and one["grad_norm"] == pytest.approx(cut["grad_norm"], rel=1e-5)
    for key in ("loss", "kl_token_mean", "clipfrac", "score_mean"):
        assert one[key] == pytest.approx(cut[key], abs=1e-6), key


def test_config_errors(repo_root, tmp_path):
    with pytest.raises(ConfigError, match="grpo.num_generations"):
        config(repo_root, tmp_path, "grpo.num_generations=1")
    with pytest.raises(ConfigError, match="grpo.minibatches"):
        config(repo_root, tmp_path, "grpo.minibatches=3")  # 8 × 4 = 32 rows
    with pytest.raises(ConfigError, match="grpo.reference"):
        config(repo_root, tmp_path, "grpo.reference=adapter")
    with pytest.raises(ConfigError, match="grpo.scale_rewards"):
        config(repo_root, tmp_path, "grpo.scale_rewards=median")
    with pytest.raises(ConfigError, match="reward.model_path"):
        config(repo_root, tmp_path, "reward.function=")
    # REINFORCE++ puts the KL in the rewards (grpo.kl_coef): no β term in its loss; the other
    # estimators may fold it into each score too; scale_rewards is read by grpo only
    with pytest.raises(ConfigError, match=r"grpo.beta=0.04 is invalid: expected 0 with "
                                          r"grpo.advantage=reinforce\+\+ \(its KL penalty"):
        config(repo_root, tmp_path, "grpo.advantage=reinforce++")
    assert config(repo_root, tmp_path, "grpo.advantage=rloo",
                  "grpo.kl_coef=0.1").needs_old_logprobs  # the KL in the rewards, RLOO's form
    with pytest.raises(ConfigError, match="grpo.scale_rewards='none' is invalid"):
        config(repo_root, tmp_path, "grpo.advantage=rloo", "grpo.scale_rewards=none")
    with pytest.raises(ConfigError, match="grpo.advantage"):
        config(repo_root, tmp_path, "grpo.advantage=ppo")
    with pytest.raises(ConfigError, match="grpo.ratio"):
        config(repo_root, tmp_path, "grpo.ratio=word")
    with pytest.raises(ConfigError, match="grpo.max_forward_tokens=-1 is invalid"):
        config(repo_root, tmp_path, "grpo.max_forward_tokens=-1")
    with pytest.raises(ConfigError, match="grpo.kl_controller='adaptive' is invalid: expected "
                                          "fixed when grpo.beta and grpo.kl_coef are both 0"):
        config(repo_root, tmp_path, "grpo.kl_controller=adaptive", "grpo.beta=0")
    assert config(repo_root, tmp_path, "grpo.advantage=dr_grpo",
                  "grpo.aggregation=sequence").loss_aggregation == "sequence"
    # per process: 8 prompts over 4 processes × 4 samples = 8 rows, not divisible by 16
    cfg = config(repo_root, tmp_path, "grpo.minibatches=16")
    cfg.check_processes(1)
    with pytest.raises(ConfigError, match="grpo.minibatches"):
        cfg.check_processes(4)
    with pytest.raises(ConfigError, match="train.batch_size"):
        cfg.check_processes(3)


def test_cli_runs_the_stage(repo_root, tmp_path, capsys, on_device):
    from rlhfkit.cli import main

    out = tmp_path / "cli"
    code = main(["grpo", "--config", str(repo_root / TINY), f"output_dir={out}",
                 f"data.train_path={repo_root}/data/tiny/prompts.jsonl", "train.max_steps=1",
                 "train.batch_size=2", "rollout.max_new_tokens=4", *on_device])
    assert code == 0 and (out / "final" / "config.json").exists()
    assert [r["step"] for r in common.read_metrics(out)] == [1]
    assert main(["grpo", "--config", str(repo_root / TINY), "grpo.num_generations=1"]) == 2
    assert "grpo.num_generations=1 is invalid" in capsys.readouterr().err


# --- the critic-free family: grpo.advantage, grpo.ratio (ops: tests/ops/test_grpo_ops.py) -------
# At the example's learning rate (3e-3) one Adam step moves the tiny random model by ~10 nats of
# KL and the score first falls; what follows differs with the CPU's float rounding (the AMD EPYC
# without avx512_bf16 of 2026-12-01: raft 0.34 → 0.11, rloo → 0.48). At 1e-3 every estimator
# climbs on both kinds of CPU (the table in test_each_estimator_learns_the_tiny_task).
ESTIMATOR_LR = "train.learning_rate=1e-3"
ESTIMATORS = {
    "rloo": ("grpo.advantage=rloo",),
    "reinforce++": ("grpo.advantage=reinforce++", "grpo.beta=0", "grpo.kl_coef=0.04"),
    "reinforce++_baseline": ("grpo.advantage=reinforce++_baseline", "grpo.beta=0",
                             "grpo.kl_coef=0.04"),
    "dr_grpo": ("grpo.advantage=dr_grpo",),
    "gspo": ("grpo.ratio=sequence", "grpo.minibatches=2"),  # 2 updates: the ratio leaves 1
    # beta=0: with the KL folded into the score, the group's winner is the one that moved least
    # from the reference, and best-of-G fine-tuning stays put (0.34 → 0.33 at 1e-3)
    "raft": ("grpo.advantage=raft", "grpo.beta=0"),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_each_estimator_learns_the_tiny_task(repo_root, tmp_path, name, on_device):
    """The example's 15 iterations at lr 1e-3 with each estimator: the score rises as with GRPO.
    Single runs are noisy (one CPU's rounding against another's moves the curve), so the test
    compares the mean of the last five iterations with the first. Measured 2026-12-01, first →
    mean of the last five: Intel Xeon with avx512_bf16: grpo 0.34 → 0.57, rloo → 0.73,
    reinforce++ → 0.60, reinforce++_baseline → 0.54, dr_grpo → 0.49, gspo → 0.83, raft → 0.69;
    AMD EPYC without it (mean of the last three): rloo 0.34 → 0.61, reinforce++ → 0.61,
    reinforce++_baseline → 0.55, dr_grpo → 0.78, gspo → 0.84, raft → 0.82."""
    out = tmp_path / name
    cfg = config(repo_root, out, *on_device, ESTIMATOR_LR, *ESTIMATORS[name])
    assert cfg.loss_aggregation == ("constant" if name == "dr_grpo" else "token")
    assert cfg.needs_old_logprobs == (name in ("reinforce++", "reinforce++_baseline", "gspo"))
    grpo.run(cfg)
    rows = common.read_metrics(out)
    first, last = rows[0]["score_mean"], sum(r["score_mean"] for r in rows[-5:]) / 5
    assert last > first + 0.1, (first, last)
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"], r["kl_mean"],
                                            r["advantage_abs_mean"]])).all() for r in rows)
    assert rows[-1]["kl_mean"] > 0.01
    if name == "gspo":  # a reused rollout: the sequence ratio moved, sometimes out of range
        assert any(r["clipfrac"] > 0 for r in rows)


def kl_in_reward_iteration(cfg, monkeypatch, move_policy=False) -> dict:
    """One GRPO iteration of ``cfg`` with its update stubbed out: what its estimator saw
    (scores, mask, kl_penalty) and the batch handed to the update. ``move_policy`` first moves
    the policy off its frozen copy, so that the KL is not 0."""
    run, tokenizer, roles, pool = setup(cfg)
    seen = {}
    original = grpo.ADVANTAGES[cfg.grpo.advantage]

    def record(scores, group_size, mask, kl_penalty, scale):
        seen.update(scores=scores, mask=mask, kl_penalty=kl_penalty)
        return original(scores, group_size, mask, kl_penalty, scale)

    def capture(run_, roles_, config_, batch, iteration, beta):
        seen["batch"] = batch
        return {}, loop.FirstStepLogprobs(batch.rollout.response_mask)

    monkeypatch.setitem(grpo.ADVANTAGES, cfg.grpo.advantage, record)
    monkeypatch.setattr(grpo, "grpo_update", capture)
    monkeypatch.setattr(grpo, "group_metrics", lambda *args: {})
    if move_policy:
        torch.manual_seed(0)
        with torch.no_grad():
            for param in roles.policy(run.accelerator).parameters():
                param.add_(0.05 * torch.randn_like(param))
    grpo.grpo_iteration(run, roles, cfg, tokenizer, pool, 1)
    return seen


def test_reinforce_pp_advantages_are_per_token_with_the_kl_in_the_rewards(repo_root, tmp_path,
                                                                          monkeypatch,
                                                                          on_device):
    """reinforce++: the rollout policy's log-probs are scored (step 2) for the penalty
    −kl_coef·(log π − log π_ref) per token; the update gets (B, R) advantages whitened over the
    real tokens (mean 0, unbiased std 1), 0 at padding."""
    cfg = config(repo_root, tmp_path, *on_device, "train.batch_size=2",
                 "grpo.advantage=reinforce++", "grpo.beta=0", "grpo.kl_coef=0.5")
    seen = kl_in_reward_iteration(cfg, monkeypatch)
    batch, mask = seen["batch"], seen["mask"]
    assert batch.logprobs is not None and batch.advantages.shape == mask.shape
    expected = -0.5 * (batch.logprobs - batch.ref_logprobs)
    torch.testing.assert_close(seen["kl_penalty"][mask], expected[mask], atol=1e-6, rtol=0)
    real = batch.advantages[mask]
    assert abs(float(real.mean())) < 1e-5 and abs(float(real.std()) - 1) < 1e-4
    assert (batch.advantages[~mask] == 0).all()


def test_rloo_with_kl_coef_folds_the_summed_kl_into_each_score(repo_root, tmp_path, monkeypatch,
                                                               on_device):
    """rloo + grpo.kl_coef: the rollout policy's log-probs are scored for the penalty, and each
    response's advantage is RLOO's of r_i − kl_coef·Σ_t (log π − log π_ref), one per response."""
    cfg = config(repo_root, tmp_path, *on_device, "train.batch_size=2", "grpo.advantage=rloo",
                 "grpo.kl_coef=0.5")
    seen = kl_in_reward_iteration(cfg, monkeypatch, move_policy=True)
    batch, mask, G = seen["batch"], seen["mask"], cfg.grpo.num_generations
    assert batch.logprobs is not None and batch.advantages.shape == (mask.shape[0],)
    kl = ((batch.logprobs - batch.ref_logprobs) * mask).sum(1)
    folded = (seen["scores"] - 0.5 * kl).view(-1, G)
    expected = folded - (folded.sum(1, keepdim=True) - folded) / (G - 1)
    torch.testing.assert_close(batch.advantages, expected.reshape(-1), atol=1e-5, rtol=0)
    assert float(kl.abs().max()) > 0  # the policy and the reference differ: the test can fail


TWO_PROCESS_SCRIPT = '''
import sys, torch
from rlhfkit.config import load_config
from rlhfkit.online import grpo
from rlhfkit.trainers import common
root, out, advantage = sys.argv[1:4]
overrides = [f"output_dir={out}", f"data.train_path={root}/data/tiny/prompts.jsonl",
             f"grpo.advantage={advantage}", "train.batch_size=4", "grpo.num_generations=2"]
if advantage.startswith("reinforce++"):
    overrides += ["grpo.beta=0", "grpo.kl_coef=0.1"]
cfg = load_config(grpo.GRPOConfig, f"{root}/examples/grpo_tiny.yaml", overrides)
run = common.start_run(cfg)
g = torch.Generator().manual_seed(0)  # the global batch: 8 rows, widths 5 (rows 0-3 end by 4)
scores, kl = torch.randn(8, generator=g), -0.1 * torch.rand(8, 5, generator=g)
lengths = torch.tensor([4, 2, 3, 1, 5, 2, 4, 3])
mask = torch.arange(5)[None, :] < lengths[:, None]
B = 8 // run.world_size
rows = slice(run.rank * B, (run.rank + 1) * B)
R = int(lengths[rows].max())  # each process's rollout is only as wide as its own responses
adv = grpo.advantages_for(run, cfg, scores[rows], kl[rows, :R], mask[rows, :R])
adv = adv if adv.dim() == 1 else torch.nn.functional.pad(adv, (0, 5 - R))
everything = run.accelerator.gather(adv.contiguous())
if run.is_main:
    torch.save(everything, f"{out}/advantages.pt")
run.accelerator.wait_for_everyone()  # no process leaves while another still talks to it
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
'''


@pytest.mark.parametrize("advantage", ["reinforce++", "grpo"])
def test_advantages_of_two_processes_equal_one(repo_root, tmp_path, advantage):
    """advantages_for gathers every process's rows (right-padded to a common width) before the
    batch statistics: REINFORCE++'s whitening and GRPO's groups give, on 2 processes (torchrun,
    gloo, each with its own rollout width), the advantages of the whole batch on 1."""
    import os
    import subprocess
    import sys

    script = tmp_path / "advantages.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    results = []
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free port
                  "--nproc_per_node", "2"] if nproc == 2 else [sys.executable]
        result = subprocess.run(prefix + [str(script), str(repo_root), str(out), advantage],
                                cwd=repo_root, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        results.append(torch.load(out / "advantages.pt"))
    torch.testing.assert_close(results[1], results[0], atol=1e-6, rtol=0)
    assert results[0].abs().sum() > 0


def test_positive_weight_scales_the_estimators_positive_advantages(repo_root, tmp_path):
    """grpo.positive_weight (W-REINFORCE's λ) reaches the advantages: each positive one × λ after
    the estimator, the negative ones as they were."""
    from types import SimpleNamespace

    run = SimpleNamespace(world_size=1, rank=0)
    scores = torch.tensor([1.0, 2.0, 4.0, 5.0, -1.0, 0.0, 3.0, 2.0])
    mask, kl = torch.ones(8, 3, dtype=torch.bool), torch.zeros(8, 3)
    full = grpo.advantages_for(run, config(repo_root, tmp_path / "a", "grpo.advantage=dr_grpo"),
                               scores, kl, mask)
    torch.testing.assert_close(full, torch.tensor([-2.0, -1.0, 1.0, 2.0, -2.0, -1.0, 2.0, 1.0]))
    weighted = grpo.advantages_for(run, config(repo_root, tmp_path / "b", "grpo.advantage=dr_grpo",
                                               "grpo.positive_weight=0.25"), scores, kl, mask)
    torch.testing.assert_close(weighted, torch.tensor([-2.0, -1.0, 0.25, 0.5, -2.0, -1.0, 0.5, 0.25]))


def test_old_logprobs_from_the_sampler_and_tis_wiring(repo_root, tmp_path, monkeypatch,
                                                      on_device):
    """A reused rollout (2 minibatches) takes its old log-probs from the sampling pass under
    rollout.old_logprobs: auto (equal to a forward's to 1e-4 at temperature 0.1); forward, or
    rollout.tis_cap > 0, runs the forward. TIS reaches the loss: at cap 1e-6 every token's
    surrogate weight is 1e-6, so the gradient (beta 0: the surrogate alone) shrinks ~1e6-fold."""
    cfg = config(repo_root, tmp_path / "a", *on_device, "grpo.minibatches=2")
    run, tokenizer, roles, pool = setup(cfg)
    loop.seed_sampling(0, 1, 0)
    rollout = loop.generate_for(run, roles, cfg, tokenizer, [pool.ids[i] for i in range(8)])
    _, from_sampler = grpo.score_group_rollout(run, roles, cfg, rollout)
    assert torch.equal(from_sampler, rollout.sampler_logprobs)
    forced = config(repo_root, tmp_path / "b", *on_device, "grpo.minibatches=2",
                    "rollout.old_logprobs=forward")
    calls = []
    original = grpo_train.policy_logprobs
    monkeypatch.setattr(grpo, "policy_logprobs",
                        lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    _, forward = grpo.score_group_rollout(run, roles, forced, rollout)
    assert calls == [{"reference": True}, {}]  # the reference, then the old-log-prob forward
    mask = rollout.response_mask
    torch.testing.assert_close(forward[mask], from_sampler[mask], atol=1e-4, rtol=0)
    assert grpo.old_logprobs_forward(run, forced) and not grpo.old_logprobs_forward(run, cfg)
    norms = {}
    for cap in (0, 1e-6):
        c = config(repo_root, tmp_path / str(cap), *on_device, "grpo.beta=0",
                   f"rollout.tis_cap={cap}", "train.batch_size=2")
        run, tokenizer, roles, pool = setup(c)
        assert grpo.old_logprobs_forward(run, c) == (cap > 0 and c.needs_old_logprobs)
        metrics, _, _ = grpo.grpo_iteration(run, roles, c, tokenizer, pool, 1)
        norms[cap] = metrics["grad_norm"]
    assert norms[0] > 1e-3 and norms[1e-6] < 1e-5 * norms[0], norms


def test_sample_from_reference_distils_the_references_best(repo_root, tmp_path, monkeypatch,
                                                            on_device):
    """grpo.sample_from=reference: the frozen reference writes every rollout (its sampler's
    log-probs stand for the reference forward; with rollout.old_logprobs=forward that forward
    runs and equals them: fidelity ~0 even after the policy moved), and with RAFT the update is
    fine-tuning on each group's best — the winners' log-probs rise under the policy. The KL
    logged is the importance-weighted KL(π ‖ π_ref): 0 at the start, then > 0."""
    cfg = config(repo_root, tmp_path, *on_device, "grpo.sample_from=reference",
                 "grpo.advantage=raft", "grpo.beta=0", "grpo.minibatches=2")
    assert cfg.from_reference and cfg.needs_old_logprobs
    run, tokenizer, roles, pool = setup(cfg)
    samplers, batches = [], []
    generate, update = rollouts.generate, grpo_train.grpo_update
    monkeypatch.setattr(rollouts, "generate",
                        lambda model, *a, **kw: samplers.append(model) or generate(model, *a, **kw))
    monkeypatch.setattr(grpo, "grpo_update",
                        lambda run_, roles_, config_, batch, *a: batches.append(batch)
                        or update(run_, roles_, config_, batch, *a))
    metrics = [grpo.grpo_iteration(run, roles, cfg, tokenizer, pool, i)[0] for i in (1, 2, 3)]
    assert samplers == [roles.ref_policy] * 3  # the frozen copy, never the policy
    assert metrics[0]["kl_mean"] == pytest.approx(0.0, abs=1e-5) and metrics[-1]["kl_mean"] > 0
    assert grpo.reference_from_sampler(run, cfg) and "fidelity_abs_max" not in metrics[0]
    torch.testing.assert_close(batches[-1].ref_logprobs, batches[-1].rollout.sampler_logprobs)
    batch = batches[-1]
    winners = batch.advantages == 1
    assert int(winners.sum()) == 8 and set(batch.advantages.tolist()) == {0.0, 1.0}
    rows = torch.arange(batch.rollout.input_ids.shape[0])
    with torch.no_grad():
        after = grpo_train.policy_logprobs(run, roles, cfg, batch.rollout, rows).float()
    gain = ((after - batch.logprobs) * batch.rollout.response_mask).sum(dim=1)  # (B,) nats
    assert gain[winners].mean() > 0.05 and gain[winners].mean() > gain[~winners].mean() + 0.02, \
        gain
    forward = config(repo_root, tmp_path, *on_device, "grpo.sample_from=reference",
                     "grpo.advantage=raft", "grpo.beta=0", "rollout.old_logprobs=forward")
    assert not grpo.reference_from_sampler(run, forward)
    moved = grpo.grpo_iteration(run, roles, forward, tokenizer, pool, 4)[0]
    assert moved["fidelity_abs_max"] < 1e-3  # the reference forward against its sampler
    with pytest.raises(ConfigError, match=r"grpo.beta=0.04 is invalid: expected 0 with "
                                          r"grpo.sample_from=reference"):
        config(repo_root, tmp_path, "grpo.sample_from=reference")
    with pytest.raises(ConfigError, match="grpo.kl_coef=0.1 is invalid"):
        config(repo_root, tmp_path, "grpo.sample_from=reference", "grpo.beta=0",
               "grpo.kl_coef=0.1")


def test_rows_without_gradient_are_skipped_with_the_same_update(repo_root, tmp_path, monkeypatch,
                                                                 on_device):
    """RAFT's losers (advantage 0) add nothing to a loss without a KL term: the update runs only
    the winners' forwards (8 of 32 rows) and takes the same step as over every row — equal
    loss and gradient norm (the denominator still counts every row)."""
    cfg = config(repo_root, tmp_path, *on_device, "grpo.advantage=raft", "grpo.beta=0",
                 "grpo.minibatches=2")
    seen, results = [], {}
    accumulate = common.accumulate_step

    def recording(run, models, optimizers, schedulers, chunks, *rest, **kw):
        seen.append(sum(len(c) for c in chunks))
        return accumulate(run, models, optimizers, schedulers, chunks, *rest, **kw)

    monkeypatch.setattr(common, "accumulate_step", recording)
    skip = grpo_train.rows_with_gradient
    for name, rows_fn in (("skip", skip), ("all", lambda run, batch, rows, *a: rows)):
        monkeypatch.setattr(grpo_train, "rows_with_gradient", rows_fn)
        run, tokenizer, roles, pool = setup(cfg)
        seen.clear()
        results[name] = (grpo.grpo_iteration(run, roles, cfg, tokenizer, pool, 1)[0], list(seen))
    (skipped, rows_skip), (full, rows_all) = results["skip"], results["all"]
    assert rows_all == [16, 16] and sum(rows_skip) <= 8 and all(n >= 1 for n in rows_skip)
    assert full["grad_norm"] > 1e-3
    assert skipped["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-5)
    assert skipped["loss"] == pytest.approx(full["loss"], abs=1e-6)
    # a KL term in the loss keeps every row
    run, tokenizer, roles, pool = setup(cfg)
    batch = grpo_train.GRPOBatch(None, None, torch.zeros(4, 2), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    rows = torch.arange(4)
    assert skip(run, batch, rows, 0.0, 0.0).tolist() == [1]
    assert skip(run, batch, rows, 0.04, 0.0).tolist() == [0, 1, 2, 3]
    assert skip(run, batch, rows[[0, 2]], 0.0, 0.0).tolist() == [0]  # one row kept: Adam steps
