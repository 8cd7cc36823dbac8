"""Stage 4: direct preference optimisation (DPO) and its family (cDPO, IPO, SimPO, SLiC hinge).

Per pair (x, y_w, y_l): sequence log-probs π_w, π_l of the chosen and rejected responses,
summed over response tokens only (prompt and padding never count), from ONE forward pass over
the concatenated batch [chosen rows; rejected rows] (2B, T); the reference policy's ref_w, ref_l;
and a per-pair loss ℓ from ``rlhfkit.ops.dpo.DPO_LOSSES`` (hand values: tests/ops/test_dpo.py).
KTO (``dpo.loss_type: kto``, unpaired {"prompt", "completion", "label"} rows) runs through the
same machinery: each example is a "pair" of its completion and a mismatched one (the next
example's completion under its prompt) whose log-ratios give the reference point z_ref
(``encode_unpaired``, ``kto_losses``; ops.dpo.kto_loss).

    loss = Σ_pairs ℓ_i / (pairs in the global batch)

The denominator counts pairs over every process and accumulation micro-step
(``common.global_count``): 2 processes × 4 pairs equal 1 process × 8 pairs.

Where ref_w, ref_l come from (``dpo.reference``):
  precomputed  computed once before training with the frozen reference and stored with the
               dataset (cached in output_dir/ref_logps.pt, which ``resume=true`` reuses):
               no reference forward pass during training. Equals ``copy``
               (tests/trainers/test_dpo_trainer.py::test_precomputed_reference_equals_on_the_fly).
  copy         a frozen copy of the reference, forwarded on every batch.
  adapter      the LoRA policy with its adapter switched off: the base weights, no second copy
               (tests/trainers/test_dpo_trainer.py::test_adapter_reference_equals_frozen_copy).
  none         reference-free (SimPO).
Sequence log-probs do not depend on padding or on the other rows of a batch
(tests/trainers/test_dpo_trainer.py::test_seq_logprobs_padding_invariant).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.optim.lr_scheduler import LRScheduler

from rlhfkit.config import StageConfig, Validated, option, require
from rlhfkit.data import Encoded, encode, load_examples, load_splits, render_prompt
from rlhfkit.models import load_tokenizer
from rlhfkit.models.packing import can_pack
from rlhfkit.ops import DPO_LOSSES, PreferenceLogps, dpo_metrics
from rlhfkit.ops.dpo import kto_loss, kto_reference_point
from rlhfkit.trainers import checkpoints, common
from rlhfkit.trainers.dpo_reference import (
    Reference,
    load_frozen,
    make_reference,
    pair_batch,
    seq_logprobs,
    shares_prompt,
)
from rlhfkit.trainers.loop import train_loop

REFERENCES = ("auto", "precomputed", "copy", "adapter", "none")


@dataclass(frozen=True)
class DPOPart(Validated):
    share_prompt: bool = option(True, "Run chosen and rejected in one packed row with their "
                                "prompt computed once (causal decoders; the same log-probs, "
                                "fewer tokens); false = one row per response.")
    loss_type: str = option("sigmoid", "Loss from rlhfkit.ops.dpo.DPO_LOSSES: sigmoid (DPO; cDPO "
                            "with label_smoothing), ipo, simpo (reference-free), hinge (SLiC); "
                            "or kto (KTO on unpaired {prompt, completion, label} rows).",
                            choices=(*DPO_LOSSES, "kto"))
    desirable_weight: float = option(1.0, "KTO λ_D: weight of the desirable (label true) "
                                     "examples (kto only).", above=0)
    undesirable_weight: float = option(1.0, "KTO λ_U: weight of the undesirable (label false) "
                                       "examples; keep λ_D·n_D / (λ_U·n_U) in [1, 4/3] (kto "
                                       "only).", above=0)
    beta: float = option(0.1, "β: the strength of the KL tie to the reference (DPO, hinge), "
                         "IPO's τ, SimPO's reward scale.", above=0)
    label_smoothing: float = option(0.0, "cDPO ε: probability that a preference label is "
                                    "flipped (sigmoid only; 0 = off).", min=0, max=0.5)
    gamma: float = option(0.0, "SimPO target reward margin γ (simpo only).", min=0)
    reference: str = option("auto", "Where the reference log-probs come from: precomputed (once, "
                            "before training), copy (frozen copy every step), adapter (LoRA base "
                            "with the adapter off), none (reference-free); auto = none for simpo, "
                            "else precomputed.", choices=REFERENCES)
    ref_model: str = option("", "Reference model (HF id, path or alias); empty = the policy's "
                            "initial weights (model.name).")
    eval_batch_size: int = option(8, "Pairs per forward pass in evaluation and precomputation.",
                                  min=1)
    max_forward_tokens: int = option(512, "Most tokens in one training forward pass: a step's "
                                     "pairs are cut into micro-batches of at most this many "
                                     "tokens (pairs x the longest pair; a packed pair counts "
                                     "prompt + both responses), never below one pair, nor above "
                                     "train.micro_batch_size when set; 0 = no cap. Activations "
                                     "grow with the tokens of a forward (~1.4 MB a token for "
                                     "SmolLM2-135M in fp32): 512 = 2 pairs of 64 + 64 + 64, peak "
                                     "RSS <= half of TRL's at >= 1.3x its speed (bench/README.md"
                                     ", memory). Same loss and gradients as one pass.", min=0)

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", self.beta, "a number > 0")

    @property
    def data_kind(self) -> str:
        """The row format read: unpaired {prompt, completion, label} for KTO, else pairs/lists."""
        return "unpaired" if self.loss_type == "kto" else "ranked"

    @property
    def reference_mode(self) -> str:
        """The reference actually used ('auto' resolved)."""
        if self.reference != "auto":
            return self.reference
        return "none" if self.loss_type == "simpo" else "precomputed"


@dataclass(frozen=True)
class DPOConfig(StageConfig):
    output_dir: str = option("runs/dpo", "Everything the run writes goes here.")
    eval_only: bool = option(False, "No training: loss and metrics of policy model.name against "
                             "dpo.ref_model on data.eval_path (or all of data.train_path), "
                             "written to output_dir and printed.")
    dpo: DPOPart = option(None, "DPO settings.", factory=DPOPart)

    def __post_init__(self):
        super().__post_init__()
        mode = self.dpo.reference_mode
        require(mode != "none" or self.dpo.loss_type == "simpo", "dpo.reference", mode,
                f"a reference for loss_type={self.dpo.loss_type!r}: only simpo is reference-free")
        if mode == "adapter":
            require(self.model.lora.enabled and not self.eval_only, "dpo.reference", mode,
                    "model.lora.enabled=true in training (the reference is the LoRA base)")
            require(not self.dpo.ref_model, "dpo.ref_model", self.dpo.ref_model,
                    "empty with reference=adapter (the reference is the policy's own base)")


# ----------------------------------------------------------------------------- data
class EncodedPair(NamedTuple):
    chosen: Encoded
    rejected: Encoded


@dataclass
class PreferenceData:
    """Encoded pairs, and the reference's sequence log-probs (N, 2) when precomputed."""
    pairs: list
    ref: torch.Tensor | None = None  # (N, 2): [:, 0] ref_w, [:, 1] ref_l
    labels: torch.Tensor | None = None  # (N,) bool, KTO only: True = desirable


def encode_pairs(examples, tokenizer, data_config) -> list[EncodedPair]:
    out = []
    for example in examples:
        prompt = render_prompt(example.messages, tokenizer, data_config.template,
                               data_config.system_prompt)
        out.append(EncodedPair(*(encode(tokenizer, prompt, response, data_config.max_prompt_length,
                                        data_config.max_length)
                                 for response in (example.chosen, example.rejected))))
    return out


def encode_unpaired(examples, tokenizer, data_config) -> list[EncodedPair]:
    """KTO rows as (completion, mismatched completion) pairs under the example's prompt: the
    mismatched one is the next example's completion (cyclically), an unrelated y' for x whose
    log-ratio estimates KL(π ‖ ref) (KTO §4.1). Both share the prompt, so they pack and are
    referenced (precomputed, copy, adapter) exactly like a DPO pair."""
    out = []
    for i, example in enumerate(examples):
        prompt = render_prompt(example.messages, tokenizer, data_config.template,
                               data_config.system_prompt)
        other = examples[(i + 1) % len(examples)].completion
        out.append(EncodedPair(*(encode(tokenizer, prompt, response, data_config.max_prompt_length,
                                        data_config.max_length)
                                 for response in (example.completion, other))))
    return out


def encode_data(examples, tokenizer, config: DPOConfig) -> PreferenceData:
    """Pairs (ranked rows) or KTO's (completion, mismatched) pairs with their labels."""
    if config.dpo.data_kind == "ranked":
        return PreferenceData(encode_pairs(examples, tokenizer, config.data))
    return PreferenceData(encode_unpaired(examples, tokenizer, config.data),
                          labels=torch.tensor([e.label for e in examples], dtype=torch.bool))


# ----------------------------------------------------------------------------- loss and metrics
def preference_logps(policy_seq: torch.Tensor, lengths: torch.Tensor,
                     ref_seq: torch.Tensor | None) -> PreferenceLogps:
    """Split (2B,) chosen-then-rejected tensors into the (B,) fields of PreferenceLogps."""
    n = policy_seq.shape[0] // 2
    ref_w, ref_l = (None, None) if ref_seq is None else (ref_seq[:n], ref_seq[n:])
    return PreferenceLogps(policy_seq[:n], policy_seq[n:], ref_w, ref_l, lengths[:n], lengths[n:])


def metric_sums(logps: PreferenceLogps, losses: torch.Tensor, beta: float) -> dict:
    """Per-batch sums of the logged metrics (divided by the global pair count later)."""
    per_token_w = logps.policy_chosen / logps.chosen_len.clamp(min=1)  # (B,)
    per_token_l = logps.policy_rejected / logps.rejected_len.clamp(min=1)  # (B,)
    if logps.ref_chosen is None:  # SimPO's implicit reward β·π/|y| (Meng et al. 2024, eq. 4)
        zeros = torch.zeros_like(per_token_w)
        rewards = dpo_metrics(PreferenceLogps(per_token_w, per_token_l, zeros, zeros), beta)
    else:
        rewards = dpo_metrics(logps, beta)
    sums = {name: value.sum() for name, value in rewards._asdict().items()}
    sums.update(loss=losses.detach().sum(), chosen_logps=logps.policy_chosen.detach().sum(),
                rejected_logps=logps.policy_rejected.detach().sum(),
                # Does the policy alone rank chosen first (per-token average log-prob)? Unlike
                # reward_accuracy it is informative before training, when rewards are all 0.
                logp_accuracy=(per_token_w > per_token_l).float().sum())
    return sums


def pair_losses(run, logps: PreferenceLogps, data: PreferenceData, idx: list[int],
                global_stats: bool) -> tuple[torch.Tensor, dict]:
    """The DPO family: ℓ per pair from DPO_LOSSES, and the metric sums."""
    dpo = run.config.dpo
    losses = DPO_LOSSES[dpo.loss_type](logps, beta=dpo.beta,
                                       label_smoothing=dpo.label_smoothing, gamma=dpo.gamma)
    return losses, metric_sums(logps, losses, dpo.beta)


def kto_losses(run, logps: PreferenceLogps, data: PreferenceData, idx: list[int],
               global_stats: bool) -> tuple[torch.Tensor, dict]:
    """KTO: r = π − ref of each completion ("chosen" rows); z_ref from the mismatched ("rejected")
    rows, over every process's micro-batch when ``global_stats`` (training), else this batch's.
    Metrics: loss, the implicit reward β·r, kl_estimate z_ref, reward_accuracy (r on the side
    of z_ref its label asks for), the desirable share, the completions' log-probs."""
    dpo = run.config.dpo
    kl = (logps.policy_rejected - logps.ref_rejected).detach()  # (B,) log-ratios of y' | x
    if global_stats:
        total = common.global_sum(run.accelerator, {"kl": kl.sum(), "count": torch.tensor(
            float(len(kl)), device=kl.device)})  # one device: global_sum stacks them
        z_ref = kto_reference_point(torch.tensor([total["kl"]], device=kl.device),
                                    total["count"])
    else:
        z_ref = kto_reference_point(kl)
    labels = data.labels[idx].to(kl.device)  # (B,)
    logratios = logps.policy_chosen - logps.ref_chosen  # (B,)
    losses = kto_loss(logratios, labels, z_ref, dpo.beta, dpo.desirable_weight,
                      dpo.undesirable_weight)
    r = logratios.detach()
    right = torch.where(labels, r > z_ref, r < z_ref)
    return losses, {"loss": losses.detach().sum(), "rewards": (dpo.beta * r).sum(),
                    "kl_estimate": z_ref * len(idx), "reward_accuracy": right.float().sum(),
                    "desirable_share": labels.float().sum(),
                    "chosen_logps": logps.policy_chosen.detach().sum()}


LOSS_FAMILIES = {"ranked": pair_losses, "unpaired": kto_losses}  # by DPOPart.data_kind


def batch_loss(run, model, reference: Reference, data: PreferenceData, idx: list[int],
               pad_id: int, global_stats: bool = False
               ) -> tuple[torch.Tensor, PreferenceLogps, dict]:
    """Per-pair losses (B,) of the pairs ``idx``, their log-probs and metric sums.
    ``global_stats``: batch statistics (KTO's z_ref) over every process (training steps)."""
    dpo = run.config.dpo
    batch = pair_batch([data.pairs[i] for i in idx], pad_id,
                       packs(run, model, reference)).to(run.device)
    with run.accelerator.autocast():
        policy_seq, lengths = seq_logprobs(model, batch)  # one pass: chosen rows, rejected rows
        # The adapter reference needs the peft model itself, not its DDP wrapper.
        ref_seq = reference.logps(run.accelerator.unwrap_model(model), data, idx, batch)
    logps = preference_logps(policy_seq.float(), lengths,
                             None if ref_seq is None else ref_seq.float())
    losses, sums = LOSS_FAMILIES[dpo.data_kind](run, logps, data, idx, global_stats)
    return losses, logps, sums


def packs(run, model, reference: Reference) -> bool:
    """Each pair runs as one packed row (dpo.share_prompt, where policy and reference allow)."""
    return shares_prompt(run, model) and (reference.ref_policy is None
                                          or can_pack(reference.ref_policy))


def pair_tokens(pair: EncodedPair, packed: bool) -> int:
    """Tokens one pair puts in a forward pass: [prompt | chosen | rejected] packed, else two
    rows of prompt + response (padded to the longer: see pair_batch)."""
    chosen, rejected = pair
    if packed:
        return len(chosen.prompt_ids) + len(chosen.response_ids) + len(rejected.response_ids)
    return 2 * max(len(e.prompt_ids) + len(e.response_ids) for e in pair)


def _add(totals: dict, sums: dict) -> None:
    for key, value in sums.items():
        totals[key] = totals.get(key, 0.0) + value.detach().float()


# ----------------------------------------------------------------------------- step, eval
def train_step(run: common.Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: LRScheduler, reference: Reference, data: PreferenceData,
               rows: list[int], pad_id: int) -> dict:
    """One optimiser step over the global batch ``rows``; returns globally reduced metrics."""
    # KTO reduces z_ref once per micro-batch: every process must make as many (no hang)
    require(run.config.dpo.data_kind == "ranked" or len(rows) % run.world_size == 0,
            "train.batch_size", len(rows), f"a multiple of the processes ({run.world_size}) "
            "with dpo.loss_type=kto")
    # The size comes from the whole global batch, so every process cuts as many micro-batches.
    packed = packs(run, model, reference)
    longest = max(pair_tokens(data.pairs[i], packed) for i in rows)
    size = common.rows_per_forward(run.config.train.micro_batch_size,
                                   run.config.dpo.max_forward_tokens, longest)
    chunks = common.micro_batches(rows, run.rank, run.world_size, size)
    n_pairs = common.global_count(run.accelerator, sum(len(c) for c in chunks))

    def losses(chunk):
        losses_, _, sums = batch_loss(run, model, reference, data, chunk, pad_id,
                                      global_stats=True)
        return [losses_.sum() / n_pairs], sums  # Σ over this process's pairs / global pairs

    totals, (grad_norm,) = common.accumulate_step(run, [model], [optimizer], [scheduler], chunks,
                                                  losses)
    count = n_pairs.item()
    metrics = {k: v / count for k, v in common.global_sum(run.accelerator, totals).items()}
    return {**metrics, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
            "pairs": int(count)}


@torch.no_grad()
def evaluate(run: common.Run, model: torch.nn.Module, reference: Reference, data: PreferenceData,
             pad_id: int, prefix: str = "eval_", per_pair: list | None = None) -> dict:
    """Pair-averaged loss and metrics on ``data``, each process taking its share of the pairs.

    ``per_pair``, when given, receives one dict per pair (all processes' pairs, on every process).
    Every sum, the pair count included, lives on run.device: they are stacked into one reduce
    (tests/trainers/test_dpo_trainer.py::test_evaluate_keeps_every_sum_on_the_run_device).
    """
    was_training = model.training
    model.eval()
    totals: dict = {"count": torch.zeros((), device=run.device)}
    mine = list(range(len(data.pairs)))[run.rank::run.world_size]
    size, rows = run.config.dpo.eval_batch_size, []
    for start in range(0, len(mine), size):
        idx = mine[start:start + size]
        losses, logps, sums = batch_loss(run, model, reference, data, idx, pad_id)
        _add(totals, {**sums, "count": torch.tensor(float(len(idx)), device=run.device)})
        if per_pair is not None:
            rows += pair_rows(idx, logps, losses)
    model.train(was_training)
    sums = common.global_sum(run.accelerator, totals)
    if per_pair is not None:
        from accelerate.utils import gather_object
        per_pair.extend(sorted(gather_object(rows) if run.world_size > 1 else rows,
                               key=lambda r: r["index"]))
    count = max(sums.pop("count"), 1.0)
    return {prefix + k: v / count for k, v in sums.items()}


def pair_rows(idx: list[int], logps: PreferenceLogps, losses: torch.Tensor) -> list[dict]:
    """Per-pair log-probs and loss, for comparing against other implementations pair by pair."""
    rows = []
    for k, i in enumerate(idx):
        row = {"index": i, "policy_chosen": logps.policy_chosen[k].item(),
               "policy_rejected": logps.policy_rejected[k].item(),
               "chosen_len": int(logps.chosen_len[k]), "rejected_len": int(logps.rejected_len[k]),
               "loss": losses[k].item()}
        if logps.ref_chosen is not None:
            row.update(ref_chosen=logps.ref_chosen[k].item(),
                       ref_rejected=logps.ref_rejected[k].item())
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- runs
def run(config: DPOConfig, train_dataset=None, eval_dataset=None, model=None,
        tokenizer=None) -> dict:
    """Train (or only evaluate), checkpoint, save ``final/``; returns the last metrics. The
    objects (rlhfkit.dpo's) replace what the config names: data.train_path/eval_path, the
    policy (a frozen copy of it is the reference unless dpo.ref_model is set), its tokenizer."""
    if config.eval_only:
        return run_eval_only(config)
    run_ = common.start_run(config, train_dataset)
    tokenizer = tokenizer or load_tokenizer(config.model.name, config.model.cache_dir)
    pad_id = tokenizer.pad_token_id
    train_examples, eval_examples = load_splits(config.data, config.dpo.data_kind, config.train.seed,
                                                train_dataset, eval_dataset)
    train_data = encode_data(train_examples, tokenizer, config)
    evaluation = encode_data(eval_examples, tokenizer, config)
    reference_source = model  # an in-memory policy: its frozen copy is the reference
    model = common.load_policy(run_, config, tokenizer, model)
    clock = time.perf_counter()
    reference = make_reference(run_, config, model, tokenizer, train_data, evaluation,
                               reference_source)
    timing = {"reference_s": time.perf_counter() - clock}
    steps = common.total_steps(config.train, len(train_data.pairs))
    optimizer = common.make_optimizer(model, config.train)
    scheduler = common.make_scheduler(optimizer, config.train, steps)
    model, optimizer, scheduler = run_.accelerator.prepare(model, optimizer, scheduler)
    start, _ = checkpoints.maybe_resume(run_)
    policy = run_.accelerator.unwrap_model(model)  # adapter_disabled needs the peft model
    before = {}
    if evaluation.pairs and start == 0:
        before = evaluate(run_, policy, reference, evaluation, pad_id)
        run_.metrics.log(0, before)
    last = train_steps(run_, model, optimizer, scheduler, reference, train_data, evaluation,
                       pad_id, start, steps, timing)
    report(run_, before, last, timing)
    common.save_final(run_, model, tokenizer)
    run_.metrics.close()
    return last


def train_steps(run: common.Run, model, optimizer, scheduler, reference: Reference,
                data: PreferenceData, evaluation: PreferenceData, pad_id: int, start: int,
                steps: int, timing: dict) -> dict:
    """The stage loop (trainers/loop.py) over DPO's step; adds train/eval seconds to ``timing``."""
    config = run.config
    policy = run.accelerator.unwrap_model(model)
    timing["eval_s"] = 0.0

    def held_out(number: int) -> dict:
        clock = time.perf_counter()
        metrics = evaluate(run, policy, reference, evaluation, pad_id)
        timing["eval_s"] += time.perf_counter() - clock
        return metrics

    def step(number: int) -> dict:
        rows = common.batch_rows(len(data.pairs), config.train.batch_size, number - 1,
                                 config.train.seed)
        return train_step(run, model, optimizer, scheduler, reference, data, rows, pad_id)

    clock = time.perf_counter()
    model.train()
    last = train_loop(run, start, steps, step, evaluate=held_out if evaluation.pairs else None,
                      desc="dpo", postfix=lambda metrics: {
                          "loss": f"{metrics['loss']:.4f}",
                          "acc": f"{metrics['reward_accuracy']:.2f}"})
    elapsed = time.perf_counter() - clock
    timing.update(steps=steps - start, train_s=elapsed - timing["eval_s"],
                  s_per_step=(elapsed - timing["eval_s"]) / max(steps - start, 1))
    return last


def report(run, before: dict, after: dict, timing: dict) -> None:
    """Print held-out metrics before/after and write timing.json (kept out of metrics.jsonl,
    whose content must not depend on the machine: resume equality compares it)."""
    if not run.is_main:
        return
    (run.output_dir / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    keys = ("eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_logp_accuracy")
    for key in keys:
        if key in after:
            was = f"{before[key]:.4f} → " if key in before else ""
            print(f"{key}: {was}{after[key]:.4f}")
    print(f"seconds per step: {timing['s_per_step']:.2f} (reference precompute "
          f"{timing['reference_s']:.1f} s, eval {timing['eval_s']:.1f} s)")


def run_eval_only(config: DPOConfig) -> dict:
    """Loss and metrics of policy ``model.name`` against the reference, no training."""
    run_ = common.start_run(config)
    tokenizer = load_tokenizer(config.model.name, config.model.cache_dir)
    path = config.data.eval_path or config.data.train_path
    examples = load_examples(path, config.dpo.data_kind, config.data.max_eval_rows)
    data = encode_data(examples, tokenizer, config)
    policy = load_frozen(config.model.name, tokenizer, run_, config.model.cache_dir)
    reference = Reference("none")
    if config.dpo.reference_mode != "none":
        ref_policy = load_frozen(config.dpo.ref_model or config.model.name, tokenizer, run_,
                                 config.model.cache_dir)
        reference = Reference("copy", ref_policy)
    per_pair: list = []
    metrics = evaluate(run_, policy, reference, data, tokenizer.pad_token_id, per_pair=per_pair)
    if run_.is_main:
        run_.metrics.log(0, metrics)
        (run_.output_dir / "eval_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        with (run_.output_dir / "eval_pairs.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in per_pair)
        print(json.dumps(metrics, indent=1))
    run_.metrics.close()
    return metrics
