"""Stage 2: reward model from human rankings (pairs and ranked lists of K ≥ 2).

The reward model (RM) maps (prompt, response) to one scalar: a sequence-classification head
read at the last real token (models.forward.sequence_scores). For a list ranked best → worst
it minimises (InstructGPT, Ouyang et al. 2022, eq. 1; ops.ranking.ranking_loss)

    loss = −1/C(K,2) · Σ_{i<j} log σ(r_i − r_j − margin)

A list with "ranks" (ties, as `rlhfkit label export` writes them) skips its tied pairs and
averages over the strictly ordered ones (``list_ranks``/``rank_grid`` → ranking_loss's ranks).
Each list is scored in ONE forward pass over its K responses: the lists of a micro-batch are
flattened to sequences (B·K_b rows), scored, and put back into a (B, K_max) grid with a
``list_mask`` (``score_lists``; tests/trainers/test_reward.py::test_score_lists_masks_short_lists).
Normalisation is explicit: every list weighs 1 / (lists in the global batch, counted over all
processes and micro-steps with ``common.global_count``), so 2 processes × 4 lists equal
1 process × 8 lists. ``final/`` holds the merged model with its trained score head and
``reward_stats.json`` (reward mean/std and the text rendering later stages must reuse).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.optim.lr_scheduler import LRScheduler

from rlhfkit.config import StageConfig, Validated, moved_into, option, require
from rlhfkit.data import Encoded, collate_sequences, encode, load_splits, render_prompt
from rlhfkit.models import ModelLoadError, apply_lora, load_scalar_model, load_tokenizer
from rlhfkit.models.forward import score_head, sequence_scores
from rlhfkit.models.packing import can_pack, pack_shared_prompts, packed_sequence_scores
from rlhfkit.models.scoring import STATS_FILE
from rlhfkit.ops.masked import masked_sum
from rlhfkit.ops.ranking import ranking_loss
from rlhfkit.trainers import checkpoints, common
from rlhfkit.trainers.loop import train_loop


@dataclass(frozen=True)
class RMPart(Validated):
    margin: float = option(0.0, "Margin m inside log σ(r_i − r_j − m) (Llama 2, eq. 2).")
    center_coef: float = option(0.0, "Reward centering: adds center_coef · mean(r²) over the "
                                "batch's responses (Eisenstein et al. 2023; 0 = off).", min=0)
    freeze_layers: int = option(0, "Freeze the token embeddings and the lowest N decoder layers "
                                "(0 = train everything); the score head always trains.", min=0)
    head_learning_rate: float = option(0.0, "Peak learning rate of the score head (0 = "
                                       "train.learning_rate). The head starts random while the "
                                       "body is pretrained: a higher rate lets it align in few "
                                       "steps instead of the body bending to a random direction.",
                                       min=0)
    share_prompt: bool = option(True, "Score a list's responses in one packed row with the "
                                "prompt computed once (causal decoders; the same scores, fewer "
                                "tokens); false = one row per response.")
    eval_batch_size: int = option(32, "Sequences per forward pass in evaluation.", min=1)
    stats_rows: int = option(512, "Lists scored for reward_stats.json when there is no held-out "
                             "split (otherwise the final evaluation's rewards are used).", min=1)


@dataclass(frozen=True)
class RMConfig(StageConfig):
    output_dir: str = option("runs/rm", "Everything the run writes goes here.")
    rm: RMPart = option(None, "Reward-model settings.", factory=RMPart)
    MOVED_KEYS: ClassVar[dict[str, str]] = moved_into("rm", RMPart)

    def __post_init__(self):
        super().__post_init__()
        require(not (self.rm.freeze_layers and self.model.lora.enabled), "rm.freeze_layers",
                self.rm.freeze_layers, "0 when model.lora.enabled (LoRA already freezes the base)")


# ----------------------------------------------------------------------------- data
def encode_lists(examples, tokenizer, data_config) -> list[list]:
    """RankedExample → its K encoded (prompt + response + EOS) sequences, best first."""
    encoded = []
    for example in examples:
        prompt = render_prompt(example.messages, tokenizer, data_config.template,
                               data_config.system_prompt)
        encoded.append([encode(tokenizer, prompt, response, data_config.max_prompt_length,
                               data_config.max_length) for response in example.responses])
    return encoded


def list_ranks(examples) -> list[tuple]:
    """Each list's ranks, 1 = best (equal = tie, from "ranks"; strictly 1..K without)."""
    return [e.ranks or tuple(range(1, len(e.responses) + 1)) for e in examples]


def rank_grid(ranks: list[tuple], list_mask: torch.Tensor) -> torch.Tensor:
    """Ranks of a chunk's lists → (B, K_max) long beside ``list_mask``: ranking_loss skips tied
    pairs (padded slots hold K_max + 1 and are masked out anyway)."""
    grid = torch.full(list_mask.shape, list_mask.shape[1] + 1, dtype=torch.long)
    for row, list_ranks_ in enumerate(ranks):
        grid[row, :len(list_ranks_)] = torch.tensor(list_ranks_)
    return grid.to(list_mask.device)


def score_lists(model, lists: list[list], pad_id: int, device, share_prompt: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over all responses of ``lists`` → (rewards, list_mask), both (B, K_max).

    Slot k of row b holds the k-th best response's reward; slots past K_b are 0 and masked out.
    ``share_prompt`` (decoders): a list's responses in one packed row, the prompt run once.
    """
    if share_prompt and can_pack(model) and score_head(model) is not None:
        scores = packed_sequence_scores(model, pack_shared_prompts(lists, pad_id).to(device))
    else:
        batch = collate_sequences([seq for seqs in lists for seq in seqs], pad_id).to(device)
        scores = sequence_scores(model, batch.input_ids, batch.attention_mask)  # (Σ K_b,)
    sizes = torch.tensor([len(seqs) for seqs in lists], device=device)
    list_mask = torch.arange(int(sizes.max()), device=device)[None, :] < sizes[:, None]  # (B, K)
    # masked_scatter fills True slots in row-major order: the order of ``flat``.
    rewards = scores.new_zeros(list_mask.shape).masked_scatter(list_mask, scores)
    return rewards, list_mask


def list_sums(rewards: torch.Tensor, list_mask: torch.Tensor, max_k: int,
              margin: float = 0.0, ranks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Detached sums whose global totals give the logged metrics (see ``finish_metrics``)."""
    rewards, list_mask = rewards.detach().float(), list_mask.bool()
    out = ranking_loss(rewards, list_mask, margin, ranks=ranks)
    n_lists = (list_mask.sum(1) >= 2).sum()
    sums = {"lists": n_lists.float(), "loss_sum": out.loss * n_lists,
            "pairs": out.num_pairs.float(), "correct": out.pair_accuracy * out.num_pairs,
            "margin_sum": out.mean_margin * out.num_pairs, "slots": list_mask.sum().float(),
            "r_sum": masked_sum(rewards, list_mask), "r2_sum": masked_sum(rewards ** 2, list_mask)}
    padded = torch.zeros(rewards.shape[0], max_k, device=rewards.device)
    padded_mask = torch.zeros(rewards.shape[0], max_k, dtype=torch.bool, device=rewards.device)
    padded[:, :rewards.shape[1]], padded_mask[:, :rewards.shape[1]] = rewards, list_mask
    for k in range(max_k):  # fixed keys 1..max_k: every process reduces the same tensors
        sums[f"rank_sum_{k + 1}"] = masked_sum(padded[:, k], padded_mask[:, k])
        sums[f"rank_n_{k + 1}"] = padded_mask[:, k].sum().float()
    return sums


def zero_sums(max_k: int, device) -> dict[str, torch.Tensor]:
    """The keys of ``list_sums`` at 0: a process with no list still joins the reduce."""
    keys = (["lists", "loss_sum", "pairs", "correct", "margin_sum", "slots", "r_sum", "r2_sum"]
            + [f"rank_{kind}_{k}" for k in range(1, max_k + 1) for kind in ("sum", "n")])
    return {key: torch.zeros((), device=device) for key in keys}


def add_sums(total: dict, part: dict) -> dict:
    return {k: total[k] + v for k, v in part.items()}


def finish_metrics(sums: dict[str, float], prefix: str = "") -> dict:
    """Global sums → loss, pair_accuracy, mean_margin, reward_mean/std, reward_rank_k."""
    pairs, slots = max(sums["pairs"], 1.0), max(sums["slots"], 1.0)
    mean = sums["r_sum"] / slots
    metrics = {"loss": sums["loss_sum"] / max(sums["lists"], 1.0),
               "pair_accuracy": sums["correct"] / pairs, "mean_margin": sums["margin_sum"] / pairs,
               "reward_mean": mean,
               "reward_std": max(sums["r2_sum"] / slots - mean ** 2, 0.0) ** 0.5}
    k = 1
    while f"rank_n_{k}" in sums:
        if sums[f"rank_n_{k}"] > 0:
            metrics[f"reward_rank_{k}"] = sums[f"rank_sum_{k}"] / sums[f"rank_n_{k}"]
        k += 1
    return {prefix + key: value for key, value in metrics.items()}


# ----------------------------------------------------------------------------- training
def train_step(run: common.Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: LRScheduler, encoded: list[list[Encoded]], rows: list[int], max_k: int,
               pad_id: int, ranks: list[tuple] | None = None) -> dict:
    """One optimiser step over the global batch ``rows`` (list indices); globally reduced."""
    config = run.config
    chunks = common.micro_batches(rows, run.rank, run.world_size, config.train.micro_batch_size)
    mine = [i for chunk in chunks for i in chunk]
    n_lists = common.global_count(run.accelerator, len(mine))  # lists in the global batch
    n_slots = common.global_count(run.accelerator, sum(len(encoded[i]) for i in mine))

    def losses(chunk):
        rewards, list_mask = score_lists(model, [encoded[i] for i in chunk], pad_id, run.device,
                                         config.rm.share_prompt)
        rewards = rewards.float()
        grid = rank_grid([ranks[i] for i in chunk], list_mask) if ranks else None
        out = ranking_loss(rewards, list_mask, config.rm.margin, ranks=grid)
        # Σ over this chunk's lists / global lists (+ centering Σ r² / global responses).
        loss = out.loss * len(chunk) / n_lists
        if config.rm.center_coef:
            loss = loss + config.rm.center_coef * masked_sum(rewards ** 2, list_mask) / n_slots
        return [loss], list_sums(rewards, list_mask, max_k, config.rm.margin, grid)

    sums, (grad_norm,) = common.accumulate_step(run, [model], [optimizer], [scheduler], chunks,
                                                losses, zero_sums(max_k, run.device))
    metrics = finish_metrics(common.global_sum(run.accelerator, sums))
    return {**metrics, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0]}


@torch.no_grad()
def evaluate(run: common.Run, model: torch.nn.Module, encoded: list[list[Encoded]], max_k: int,
             pad_id: int, prefix: str = "eval_", ranks: list[tuple] | None = None
             ) -> tuple[dict, dict]:
    """Held-out metrics (each process scores its share of lists) and the global sums."""
    model.eval()
    mine = list(range(len(encoded)))[run.rank::run.world_size]
    sums = zero_sums(max_k, run.device)
    start = 0
    while start < len(mine):  # batches of whole lists, about rm.eval_batch_size sequences each
        chunk, width = [], 0
        while start < len(mine) and (not chunk or width + len(encoded[mine[start]])
                                     <= run.config.rm.eval_batch_size):
            chunk.append(mine[start])
            width += len(encoded[mine[start]])
            start += 1
        with run.accelerator.autocast():
            rewards, list_mask = score_lists(model, [encoded[i] for i in chunk], pad_id,
                                             run.device, run.config.rm.share_prompt)
        grid = rank_grid([ranks[i] for i in chunk], list_mask) if ranks else None
        sums = add_sums(sums, list_sums(rewards, list_mask, max_k, run.config.rm.margin, grid))
    model.train()
    totals = common.global_sum(run.accelerator, sums)
    return finish_metrics(totals, prefix), totals


# ----------------------------------------------------------------------------- model
def embeddings_and_layers(model) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """The token embeddings and the stack of transformer layers of a decoder (Llama-style:
    ``embed_tokens``, ``layers``) or an encoder (BERT-style: ``embeddings``, ``encoder.layer``)."""
    backbone = getattr(model, model.base_model_prefix)
    if hasattr(backbone, "layers"):
        return backbone.embed_tokens, backbone.layers
    return backbone.embeddings, backbone.encoder.layer


def freeze_lower_layers(model, n_layers: int) -> None:
    """Freeze the embeddings and layers [0, n_layers): their backward is never run."""
    embeddings, layers = embeddings_and_layers(model)
    if n_layers > len(layers):
        raise ModelLoadError(f"rm.freeze_layers={n_layers} is invalid: the model has {len(layers)} "
                             "layers")
    embeddings.requires_grad_(False)
    for layer in layers[:n_layers]:
        layer.requires_grad_(False)


def build_model(run, config: RMConfig, tokenizer, model=None):
    """model.name with a scalar head (or ``model``, one already loaded with one), frozen lower
    layers, LoRA."""
    if model is None:
        model = load_scalar_model(config.model.name, tokenizer, run.dtype, config.model.cache_dir)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.rm.freeze_layers:
        freeze_lower_layers(model, config.rm.freeze_layers)
    if config.model.lora.enabled:
        # SEQ_CLS: peft wraps ``score`` in modules_to_save, so the head trains fully
        # (tests/trainers/test_reward.py::test_lora_keeps_score_head_trainable).
        model = apply_lora(model, config.model.lora, task_type="SEQ_CLS")
    return model


HEADS = ("score", "classifier")  # the scalar head of decoders / of encoders (BERT)


def is_head(name: str) -> bool:
    return any(name.startswith(h + ".") or f".{h}." in name for h in HEADS)


def make_optimizer(model, config: RMConfig):
    """AdamW over trainable weights; the score head gets ``rm.head_learning_rate`` when set (the
    schedule scales both groups alike)."""
    named = list(model.named_parameters())
    return common.make_optimizer(
        [{"params": [p for n, p in named if not is_head(n)]},
         {"params": [p for n, p in named if is_head(n)],
          "lr": config.rm.head_learning_rate or config.train.learning_rate}], config.train)


def reward_stats(totals: dict, source: str, data_config) -> dict:
    """What later stages need to normalise scores and render text like the RM saw it."""
    metrics = finish_metrics(totals)
    return {"mean": metrics["reward_mean"], "std": metrics["reward_std"],
            "count": int(totals["slots"]), "source": source,
            "template": data_config.template, "system_prompt": data_config.system_prompt,
            "max_prompt_length": data_config.max_prompt_length,
            "max_length": data_config.max_length}


def save_stats(run, stats: dict) -> None:
    if run.is_main:
        (run.output_dir / "final" / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")


# ----------------------------------------------------------------------------- loop
def run(config: RMConfig, train_dataset=None, eval_dataset=None, model=None,
        tokenizer=None) -> dict:
    """Train, checkpoint, evaluate, save ``final/`` + reward_stats.json; returns last metrics.
    The objects (rlhfkit.rm's) replace what the config names: data.train_path/eval_path, the
    model (a sequence classifier with one label), its tokenizer."""
    run_ = common.start_run(config, train_dataset)
    tokenizer = tokenizer or load_tokenizer(config.model.name, config.model.cache_dir)
    train_examples, eval_examples = load_splits(config.data, "ranked", config.train.seed,
                                                train_dataset, eval_dataset)
    train_encoded = encode_lists(train_examples, tokenizer, config.data)
    eval_encoded = encode_lists(eval_examples, tokenizer, config.data)
    train_ranks, eval_ranks = list_ranks(train_examples), list_ranks(eval_examples)
    max_k = max(len(seqs) for seqs in train_encoded + eval_encoded)
    model = build_model(run_, config, tokenizer, model)
    steps = common.total_steps(config.train, len(train_encoded))
    optimizer = make_optimizer(model, config)
    scheduler = common.make_scheduler(optimizer, config.train, steps)
    model, optimizer, scheduler = run_.accelerator.prepare(model, optimizer, scheduler)
    start, _ = checkpoints.maybe_resume(run_)
    pad_id = tokenizer.pad_token_id
    evaluated: dict = {}  # the global sums of the latest evaluation

    def held_out(number: int) -> dict:
        metrics, evaluated["totals"] = evaluate(run_, model, eval_encoded, max_k, pad_id,
                                                ranks=eval_ranks)
        return metrics

    def step(number: int) -> dict:
        rows = common.batch_rows(len(train_encoded), config.train.batch_size, number - 1,
                                 config.train.seed)
        return train_step(run_, model, optimizer, scheduler, train_encoded, rows, max_k, pad_id,
                          train_ranks)

    model.train()
    last = train_loop(run_, start, steps, step, evaluate=held_out if eval_encoded else None,
                      desc="rm", postfix=lambda metrics: {
                          "loss": f"{metrics['loss']:.4f}",
                          "acc": f"{metrics['pair_accuracy']:.2f}"})
    eval_totals = evaluated.get("totals")
    # reward_stats.json: rewards of the final evaluation, or of the first rm.stats_rows training
    # lists when there is no held-out split.
    source = "eval" if eval_encoded else "train"
    if eval_totals is None:  # no held-out split, or resumed at the last step
        stats_lists = eval_encoded or train_encoded[:config.rm.stats_rows]
        _, eval_totals = evaluate(run_, model, stats_lists, max_k, pad_id, ranks=eval_ranks
                                  if eval_encoded else train_ranks[:config.rm.stats_rows])
    common.save_final(run_, model, tokenizer)
    save_stats(run_, reward_stats(eval_totals, source, config.data))
    run_.metrics.close()
    return last

