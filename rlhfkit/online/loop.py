"""What the online stages (PPO, GRPO) share: the rollout and reward settings, prompts, the
scoring pass of a rollout, held-out evaluation, the update's epochs over shuffled minibatches
(``update_epochs``) and the run (``train_online``: evaluation before/after, rollout logs, and
the stage loop of rlhfkit/trainers/loop.py with checkpoints holding the stage's state).
The stages themselves (rlhfkit/online/ppo.py, grpo.py) hold their config and one iteration.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from rlhfkit.config import StageConfig, Validated, option, require
from rlhfkit.data import encode, load_splits, render_prompt
from rlhfkit.models import averaged, interpolated, load_tokenizer, trained_weights
from rlhfkit.models.forward import response_logprobs
from rlhfkit.online import rollout as rollouts
from rlhfkit.online.rewards import Prompt
from rlhfkit.online.roles import Roles, build_roles
from rlhfkit.ops import adaptive_kl_update, masked_sum
from rlhfkit.ops.fidelity import logprob_gap, truncated_importance_weights
from rlhfkit.trainers import checkpoints, common
from rlhfkit.trainers.loop import train_loop


# ----------------------------------------------------------------------------- config parts
@dataclass(frozen=True)
class RolloutPart(Validated):
    max_new_tokens: int = option(32, "Response tokens generated at most (then cut, no EOS).", min=1)
    temperature: float = option(1.0, "Sampling temperature (> 0); log-probs use the same one.",
                                min=0)
    top_p: float = option(1.0, "Nucleus sampling (1 = off).", min=0, max=1)
    top_k: int = option(0, "Top-k sampling (0 = off).", min=0)
    old_logprobs: str = option("auto", "Where the old log-probs of PPO (and of GRPO when a rollout "
                               "feeds several updates) come from: auto = the sampling pass's "
                               "own, without a scoring forward, where they equal the trainer's "
                               "(float32 weights, no bf16 autocast, rollout.tis_cap 0), else a "
                               "no-grad trainer forward; forward = always that forward.",
                               choices=("auto", "forward"))
    tis_cap: float = option(0.0, "Truncated importance sampling: each token's policy-gradient "
                            "term weighted by min(π_trainer/π_sampler, tis_cap), the old "
                            "log-probs then from a trainer forward (0 = off).", min=0)
    compile: bool = option(False, "Run the decode step through torch.compile (static shapes, "
                           "compiled once per process; same distribution). SmolLM2-135M on 2 CPU "
                           "cores: a decode step 96 → 80 ms for 16 rows, for 8–17 s of "
                           "compilation (72 s with a cold inductor cache), so it pays only "
                           "after tens of batches (bench/README.md, 'Generation: where the time "
                           "goes').")

    def __post_init__(self):
        super().__post_init__()
        require(self.temperature > 0, "temperature", self.temperature, "a number > 0")
        require(self.top_p > 0, "top_p", self.top_p, "a number in (0, 1]")


@dataclass(frozen=True)
class RewardPart(Validated):
    model_path: str = option("", "Reward model folder (the final/ of `rlhfkit rm`); empty = none.")
    model_weight: float = option(1.0, "Weight of the reward-model score in the sum.")
    url: str = option("", "A reward model served by `rlhfkit serve-rm`, e.g. "
                      "http://127.0.0.1:8766; empty = none. Reads model_input and normalize as "
                      "model_path does (docs/serve_rm.md).")
    url_weight: float = option(1.0, "Weight of the served reward model's score in the sum.")
    url_timeout: float = option(30.0, "Seconds to wait for each answer of reward.url.", above=0)
    url_retries: int = option(2, "Retries of a failed reward.url request, after 0.5 s, 1 s, 2 s, "
                              "... (0 = off: one attempt).", min=0)
    function: str = option("", "Python reward 'module:function(prompts, responses, **kwargs) -> "
                           "list[float]'; empty = none. Example: rlhfkit.online.rewards:char_share.")
    function_kwargs: dict = option(None, "Keyword arguments passed to the function.",
                                   factory=dict)
    function_weight: float = option(1.0, "Weight of the function's score in the sum.")
    model_input: str = option("pair", "What the reward model reads: pair = (prompt, response) "
                              "rendered as in its training; text = prompt + response as one "
                              "text (prompt-free RMs, e.g. the IMDB sentiment RM); response = "
                              "the response alone (prompt-free RMs judging the continuation).",
                              choices=("pair", "text", "response"))
    normalize: bool = option(False, "Standardise the RM score with the mean/std in its "
                             "reward_stats.json.")
    reward_clip: float = option(5.0, "The score is clipped to ±reward_clip (0 = off: no "
                                "clipping).", min=0)
    missing_eos_penalty: float = option(0.0, "Subtracted from the score of responses cut at "
                                        "max_new_tokens without EOS (0 = off).", min=0)
    batch_size: int = option(16, "Rows per reward-model forward pass.", min=1)

    def __post_init__(self):
        super().__post_init__()
        require(not self.url or self.url.startswith(("http://", "https://")), "url", self.url,
                "an http:// or https:// address of `rlhfkit serve-rm`, or empty")


@dataclass(frozen=True)
class KLControl(Validated):
    """KL control, the last step of an iteration: the KL coefficient (PPO's ppo.kl_coef;
    GRPO's grpo.beta, or grpo.kl_coef with the reinforce++ estimators) stays fixed, or follows
    Ziegler et al.'s adaptive controller (ops.adaptive_kl_update); checkpoints hold its value."""
    kl_controller: str = option("fixed", "fixed KL coefficient, or adaptive (Ziegler et al. "
                                "2019): scaled after each iteration towards target_kl.",
                                choices=("fixed", "adaptive"))
    target_kl: float = option(6.0, "Adaptive controller: target KL per response (nats).",
                              above=0)
    kl_horizon: int = option(10000, "Adaptive controller: horizon in samples (responses).", min=1)

    def next_coef(self, coef: float, kl_mean: float, samples: int) -> float:
        """The coefficient for the next iteration, after one of ``samples`` responses whose
        mean KL was ``kl_mean``."""
        if self.kl_controller == "fixed":
            return coef
        return adaptive_kl_update(coef, kl_mean, self.target_kl, self.kl_horizon, samples)


@dataclass(frozen=True)
class OnlineConfig(StageConfig):
    """The keys PPO and GRPO share; each stage adds its own part (``ppo``, ``grpo``)."""
    rollout: RolloutPart = option(None, "Generation settings (step 1).", factory=RolloutPart)
    reward: RewardPart = option(None, "Reward sources (step 2).", factory=RewardPart)
    sample_every: int = option(10, "Print a sample table and write samples.jsonl / rollouts.jsonl "
                               "every N iterations (and the last; 0 = last only).", min=0)
    num_samples: int = option(4, "Rollouts shown per sample table / rollouts.jsonl.", min=1)
    eval_batch_size: int = option(0, "Held-out prompts each process decodes in one pass in the "
                                  "evaluation before and after (0 = train.batch_size / processes); "
                                  "scored in passes of that size as before. A wide pass decodes "
                                  "faster on CPU: SmolLM2, 64 openings × 24 tokens in 7.1 s in one "
                                  "pass, 16.6 s in passes of 8 (2 cores).", min=0)
    eval_samples_per_prompt: int = option(1, "Continuations sampled per held-out prompt in the "
                                          "evaluation before and after; the shares, means and "
                                          "KL are over all of them (a pass of eval_batch_size "
                                          "prompts decodes that many times as many rows). With "
                                          "1 continuation per prompt, 64 prompts measure a "
                                          "positive share of 0.85 to ±4.5 points (binomial sd).",
                                          min=1)
    final_interpolation: float = option(1.0, "η of WARP's LITI (Ramé et al. 2024): the final "
                                        "policy (the evaluation after, final/) is θ_init + "
                                        "η·(θ − θ_init), the trained weights moved back "
                                        "towards the start — for LoRA, the adapter's weight "
                                        "change × η. Checkpoints keep θ (resume is exact). "
                                        "1 = the trained policy.", above=0, max=1)
    final_average_from: int = option(0, "Iterate averaging (Polyak–Ruppert): the final policy "
                                     "(the evaluation after, final/) is the mean of the "
                                     "policies after iterations N, N+1, … the last — for "
                                     "LoRA the mean of the adapters' weight changes, exactly "
                                     "(an adapter of rank r × their count); then "
                                     "final_interpolation. The random walk of single updates "
                                     "averages out, what they share stays. Checkpoints keep "
                                     "the trained policy and the iterates (resume is exact). "
                                     "0 = off.", min=0)


def resolve_reference(reference: str, lora: bool) -> str:
    """auto → adapter with LoRA (no second copy of the weights), else a frozen copy."""
    if reference != "auto":
        return reference
    return "adapter" if lora else "copy"


def require_reward_and_reference(config, reference: str, key: str) -> None:
    """A reward source is set; an adapter reference needs LoRA (``key`` names the setting)."""
    require(bool(config.reward.model_path or config.reward.url or config.reward.function),
            "reward.model_path", config.reward.model_path,
            "a reward model folder, or set reward.url or reward.function")
    require(reference != "adapter" or config.model.lora.enabled, key, reference,
            "copy or auto when model.lora.enabled is false")


class Iterates:
    """The policy's trained weights after each iteration from ``final_average_from`` on, for
    the final average (``models.averaged``); saved with every checkpoint (accelerate's
    ``register_for_checkpointing``), so a resumed run averages the same iterates."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = list(state["weights"])


# ----------------------------------------------------------------------------- prompts
@dataclass
class Prompts:
    texts: list   # rewards.Prompt per example: the str reward functions read, carrying the
    #               whole conversation the reward model scores (tests/online/test_rewards.py)
    ids: list     # rendered (template) and tokenised, cut from the left


def encode_prompts(examples, tokenizer, data_config) -> Prompts:
    """Every turn of each prompt reaches the reward sources, not only the last one: a reward
    model trained on whole dialogues (HH) scores the text it was trained on."""
    texts = [Prompt(e.messages) for e in examples]
    ids = [encode(tokenizer, render_prompt(e.messages, tokenizer, data_config.template,
                                           data_config.system_prompt),
                  None, data_config.max_prompt_length, data_config.max_length).prompt_ids
           for e in examples]
    return Prompts(texts, ids)


def seed_sampling(seed: int, iteration: int, rank: int) -> None:
    """The rollouts of an iteration depend only on (seed, iteration, process) and the weights."""
    torch.manual_seed((seed * 1_000_003 + iteration * 9_973 + rank) % 2**63)


def generate_for(run, roles: Roles, config, tokenizer, prompt_ids, reference: bool = False):
    """The rollout of ``prompt_ids``, sampled by the policy (or by the reference: GRPO's
    grpo.sample_from=reference)."""
    with contextlib.ExitStack() as stack:
        model = (stack.enter_context(roles.reference(run.accelerator)) if reference
                 else roles.policy(run.accelerator))
        return rollouts.generate(model, prompt_ids, config.rollout.max_new_tokens,
                                 config.rollout.temperature, config.rollout.top_p,
                                 config.rollout.top_k, tokenizer.pad_token_id,
                                 tokenizer.eos_token_id, config.rollout.compile)


# ----------------------------------------------------------------------------- scoring
class Scored(NamedTuple):
    logprobs: torch.Tensor      # (B, R) old policy log-probs of the sampled tokens (the trainer's,
    #                             or the sampler's where ``from_sampler``)
    ref_logprobs: torch.Tensor  # (B, R) reference log-probs
    values: torch.Tensor        # (B, R) V_t before each response token
    entropy: torch.Tensor       # (B, R) policy entropy at each response position
    scores: torch.Tensor        # (B,) summed score (before the missing-EOS penalty and clipping)
    parts: dict                 # {source name: (B,)}
    responses: list             # response texts
    from_sampler: bool = False  # logprobs and entropy are the sampling pass's (no policy forward)


def sampler_stands_for_trainer(run, config) -> bool:
    """``rollout.old_logprobs: auto``: the sampling pass's log-probs replace the trainer's
    no-grad forward where the two are equal to the tested tolerance, 5e-5 nats
    (tests/models/test_generate.py::test_sampler_logprobs_equal_the_trainers_forward): the same
    weights in float32 without bf16 autocast (dropout is always off: roles.build_roles). Not with
    rollout.tis_cap, whose weight compares the two."""
    return (config.rollout.old_logprobs == "auto" and config.rollout.tis_cap == 0
            and run.dtype == torch.float32 and config.train.mixed_precision != "bf16")


@torch.no_grad()
def score_rollout(run, roles: Roles, config, tokenizer, rollout, prompts,
                  use_sampler: bool = False, with_values: bool = True) -> Scored:
    """2. Scoring on prompt + response, no gradients, in chunks of train.micro_batch_size.
    ``use_sampler``: the old log-probs and entropy are the rollout's own (the sampler's) and the
    policy forward is skipped, unless a shared value head needs that forward for the values.
    ``with_values`` False (evaluation): no critic forward, values 0."""
    temperature, P = config.rollout.temperature, rollout.prompt_width
    size = config.train.micro_batch_size or rollout.input_ids.shape[0]
    critic = roles.critic if with_values else None
    # The policy forward also gives a shared value head's values: skipped when those come from
    # a separate critic or are not wanted.
    skip_policy = use_sampler and (critic is not None or not with_values)
    pieces = []
    models = [m for m in (roles.actor, critic) if m is not None]
    for model in models:
        model.eval()
    for start in range(0, rollout.input_ids.shape[0], size):
        mb = rollout.select(slice(start, start + size))
        ids, attn, seq_mask = mb.input_ids, mb.attention_mask, mb.sequence_response_mask
        with run.accelerator.autocast():
            if skip_policy:
                logprobs, entropy, shared_values = mb.sampler_logprobs, mb.sampler_entropy, None
            else:
                out, shared_values = roles.actor(ids, attn, seq_mask, True, temperature)
                logprobs, entropy = out.logprobs[:, P - 1:], out.entropy[:, P - 1:]
            with roles.reference(run.accelerator) as ref_policy:
                ref_out = response_logprobs(ref_policy, ids, attn, seq_mask, False, temperature)
            if critic is not None:
                values = critic(ids, attn)
            elif shared_values is not None and with_values:
                values = shared_values
            else:  # no critic (GRPO), or values not wanted
                values = torch.zeros(ids.shape, device=ids.device)
        pieces.append((logprobs, ref_out.logprobs[:, P - 1:], values[:, P - 1:-1], entropy))
    for model in models:
        model.train()
    logprobs, ref_logprobs, values, entropy = (torch.cat(p).float() for p in zip(*pieces))
    responses = rollouts.decode_responses(tokenizer, rollout)
    scores, parts = roles.reward.score(prompts, responses)
    return Scored(logprobs, ref_logprobs, values, entropy, scores.to(run.device), parts, responses,
                  skip_policy)


# ----------------------------------------------------------------------------- rollout fidelity
class FirstStepLogprobs:
    """The trainer's log-probs of the rollout's tokens at the rollout's weights, as the update's
    first optimiser step computes them (before it changes the weights): every row with one
    minibatch, the first minibatch's rows otherwise. ``update_epochs`` closes it after that step.
    """

    def __init__(self, response_mask: torch.Tensor):
        self.logprobs = torch.zeros(response_mask.shape, device=response_mask.device)  # (B, R)
        self.rows = torch.zeros(response_mask.shape[0], dtype=torch.bool,
                                device=response_mask.device)  # (B,) rows recorded
        self.open = True

    def record(self, rows: torch.Tensor, logprobs: torch.Tensor) -> None:
        if self.open:
            self.logprobs[rows] = logprobs.detach().float()
            self.rows[rows] = True


def fidelity_for(run, rollout, trainer_logprobs: torch.Tensor,
                 compared: torch.Tensor | None = None) -> tuple[dict, tuple]:
    """The sampler's log-probs against the trainer's on the rows ``compared`` (B,) (default all):
    metrics over every process's tokens (``fidelity_abs_mean``, ``fidelity_abs_max``,
    ``fidelity_share_over_0.1``, ``fidelity_tokens``) and this process's per-token view
    (|Δ| (B, R), compared (B,)) for rollouts.jsonl."""
    if compared is None:
        compared = torch.ones(rollout.response_mask.shape[0], dtype=torch.bool,
                              device=rollout.response_mask.device)
    mask = rollout.response_mask & compared[:, None]  # (B, R)
    every = logprob_gap(gather_rows(run, trainer_logprobs),
                        gather_rows(run, rollout.sampler_logprobs), gather_rows(run, mask))
    B, R = mask.shape
    mine = every.abs_gap[run.rank * B:(run.rank + 1) * B, :R]  # this process's rows
    metrics = {"fidelity_abs_mean": every.abs_mean, "fidelity_abs_max": every.abs_max,
               "fidelity_share_over_0.1": every.share_over,
               "fidelity_tokens": common.global_count(run.accelerator, mask.sum())}
    return {k: float(v) for k, v in metrics.items()}, (mine, compared)


def tis_weights(config, old_logprobs: torch.Tensor, rollout) -> torch.Tensor | None:
    """Truncated importance sampling (``rollout.tis_cap``; None when 0 = off): min(π_trainer /
    π_sampler, cap) per token, π_trainer the old log-probs of the trainer's forward. (B, R)"""
    if config.rollout.tis_cap == 0:
        return None
    return truncated_importance_weights(old_logprobs, rollout.sampler_logprobs,
                                        rollout.response_mask, config.rollout.tis_cap)


def gather_rows(run, tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every process, in rank order, right-padded to a common width (dim 1)."""
    if run.world_size == 1:
        return tensor
    dtype = tensor.dtype
    tensor = tensor.float() if dtype == torch.bool else tensor
    padded = run.accelerator.pad_across_processes(tensor, dim=1) if tensor.dim() > 1 else tensor
    return run.accelerator.gather(padded).to(dtype)


# ----------------------------------------------------------------------------- evaluation and the loop
@torch.no_grad()
def evaluate(run, roles: Roles, config, tokenizer, pool: Prompts,
             iteration: int) -> tuple[dict, list[dict]]:
    """Held-out prompts: score and KL to the reference of sampled responses (same noise before
    and after training: the sampling seed is fixed), ``eval_samples_per_prompt`` of them per
    prompt, each a row (its ``sample`` 0, 1, ...). Decoded in passes of ``eval_batch_size``
    prompts (their continuations in one generate call), scored in passes of train.batch_size /
    processes rows; the policy's log-probs are the sampler's where they equal the trainer's
    (``sampler_stands_for_trainer``), and no critic runs: one forward (the reference's) per
    pass."""
    seed_sampling(config.train.seed + 1, 0, run.rank)
    n = config.eval_samples_per_prompt
    mine = [(i, k) for i in list(range(len(pool.ids)))[run.rank::run.world_size]
            for k in range(n)]  # (prompt, sample) per row, a prompt's samples side by side
    size = max(1, config.train.batch_size // run.world_size)
    use_sampler = sampler_stands_for_trainer(run, config)
    rows, sums = [], {"score": 0.0, "kl": 0.0, "length": 0.0, "count": 0.0}
    width = (config.eval_batch_size or size) * n
    for first in range(0, len(mine), width):
        wide = mine[first:first + width]
        wide_rollout = generate_for(run, roles, config, tokenizer,
                                    [pool.ids[i] for i, _ in wide])
        for start in range(0, len(wide), size):
            chunk = wide[start:start + size]
            prompts = [pool.texts[i] for i, _ in chunk]
            rollout = wide_rollout.select(slice(start, start + size))
            scored = score_rollout(run, roles, config, tokenizer, rollout, prompts, use_sampler,
                                   with_values=False)
            add_eval_pass(rows, sums, iteration, prompts, [k for _, k in chunk], rollout, scored)
    sums = common.global_sum(run.accelerator, {k: torch.tensor(v) for k, v in sums.items()})
    n = max(sums["count"], 1.0)
    return {"eval_score_mean": sums["score"] / n, "eval_kl_mean": sums["kl"] / n,
            "eval_response_length_mean": sums["length"] / n}, rows


def add_eval_pass(rows: list, sums: dict, iteration: int, prompts, samples: list, rollout,
                  scored: Scored) -> None:
    """An evaluation pass's eval.jsonl rows (appended to ``rows``) and sums (added to ``sums``);
    ``samples`` numbers each row's continuation of its prompt."""
    mask = rollout.response_mask
    kl = masked_sum(scored.logprobs - scored.ref_logprobs, mask, dim=1)  # (B,) k1, nats
    for row, prompt in enumerate(prompts):
        rows.append({"iteration": iteration, "prompt": prompt, "sample": samples[row],
                     "response": scored.responses[row], "score": float(scored.scores[row]),
                     "kl": float(kl[row]), "length": int(mask[row].sum())})
    for key, value in (("score", scored.scores.sum()), ("kl", kl.sum()),
                       ("length", mask.sum()), ("count", len(prompts))):
        sums[key] += float(value)


def update_epochs(run: common.Run, epochs: int, minibatches: int, n_rows: int, iteration: int,
                  minibatch_step: Callable[[torch.Tensor], dict], schedulers: list,
                  first_step: FirstStepLogprobs | None = None) -> dict:
    """The update of PPO (step 5) and GRPO (step 4): ``epochs`` passes over the rollout's
    ``n_rows`` rows, each shuffled (a generator seeded per iteration) and cut into
    ``minibatches``; ``minibatch_step(rows)`` makes one optimiser step and returns its stats.
    Returns the stats averaged over the epochs × minibatches updates, and the current lr.
    ``first_step`` records only during the first step (the rollout's weights)."""
    size = n_rows // minibatches
    shuffle = torch.Generator().manual_seed(run.config.train.seed * 7919 + iteration)
    totals: dict = {}
    n_updates = epochs * minibatches
    for _ in range(epochs):
        order = torch.randperm(n_rows, generator=shuffle).to(run.device)
        for k in range(minibatches):
            stats = minibatch_step(order[k * size:(k + 1) * size])
            if first_step is not None:
                first_step.open = False
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / n_updates
    totals["lr"] = schedulers[0].get_last_lr()[0]
    return totals


def train_online(config, stage: str, step, state: dict, train_dataset=None, eval_dataset=None,
                 model=None, tokenizer=None, reward_fn=None) -> dict:
    """The online stages' run (PPO, GRPO): roles, before/after evaluation on held-out prompts,
    then the stage loop (trainers/loop.py) over ``step``, checkpoints holding ``state``,
    ``final/``.

    ``step(run, roles, config, tokenizer, pool, iteration, state)`` returns (metrics, sample
    rows, per-token rows, next state); its metrics hold ``score_mean`` and ``kl_mean``.
    The objects (rlhfkit.ppo's and rlhfkit.grpo's) replace what the config names: prompt rows
    for data.train_path/eval_path, the policy for model.name (the critic and a reward model
    still load from the config), its tokenizer, and a Python reward function for
    reward.function (called as one: ``reward_fn(prompts, responses, **reward.function_kwargs)``)."""
    run_ = common.start_run(config, train_dataset)
    config.check_processes(run_.world_size)
    # Sharded (FSDP2), a full model's parameters are shards and the reference copy is whole.
    require(config.final_interpolation == 1 or config.model.lora.enabled
            or not common.is_sharded(run_), "final_interpolation", config.final_interpolation,
            "1 for a fully fine-tuned policy under FSDP (model.lora.enabled: true interpolates "
            "sharded)")
    require(config.final_average_from == 0 or not common.is_sharded(run_), "final_average_from",
            config.final_average_from, "0 under FSDP (the iterates are kept whole, on one "
            "process)")
    tokenizer = tokenizer or load_tokenizer(config.model.name, config.model.cache_dir)
    train_examples, eval_examples = load_splits(config.data, "prompt", config.train.seed,
                                                train_dataset, eval_dataset)
    pool = encode_prompts(train_examples, tokenizer, config.data)
    eval_pool = encode_prompts(eval_examples, tokenizer, config.data)
    iterations = common.total_steps(config.train, len(pool.ids))
    roles = build_roles(run_, config, tokenizer, iterations, model, reward_fn)
    iterates = Iterates()
    if config.final_average_from:
        run_.accelerator.register_for_checkpointing(iterates)
    start, extra = checkpoints.maybe_resume(run_)
    state = {key: extra.get(key, value) for key, value in state.items()}
    logs = rollouts.RolloutLogs(run_.output_dir, run_.is_main, stage)
    logs.truncate_after(start if start else -1)  # a fresh run starts its logs empty
    summary: dict = {}

    def final_weights(iteration: int):
        """The final policy (``final_average_from``, then ``final_interpolation``) for the last
        evaluation and final/."""
        last = iteration == iterations
        stack = contextlib.ExitStack()
        policy = stack.enter_context(averaged(roles.policy(run_.accelerator),
                                              iterates.weights if last else []))
        stack.enter_context(interpolated(policy, config.final_interpolation if last else 1.0,
                                         roles.ref_policy))
        return stack

    def held_out(iteration: int) -> dict:
        with final_weights(iteration):
            metrics, rows = evaluate(run_, roles, config, tokenizer, eval_pool, iteration)
        summary["before" if iteration == 0 else "after"] = metrics
        logs.eval.write(rows)
        return metrics

    def one_iteration(iteration: int) -> dict:
        metrics, samples, token_rows, next_state = step(run_, roles, config, tokenizer, pool,
                                                        iteration, state)
        state.update(next_state)  # the checkpoint of this iteration holds the next state
        if config.final_average_from and iteration >= config.final_average_from:
            iterates.weights.append(trained_weights(roles.policy(run_.accelerator)))
        if common.should(config.sample_every, iteration, iterations):
            logs.write_samples(samples, token_rows, iteration)
        return metrics

    if eval_pool.ids and start == 0:
        run_.metrics.log(0, held_out(0))
    summary["last"] = train_loop(run_, start, iterations, one_iteration,
                                 evaluate=held_out if eval_pool.ids else None, state=state,
                                 desc=stage, postfix=online_postfix)
    with final_weights(iterations):
        common.save_final(run_, roles.policy(run_.accelerator), tokenizer)
    run_.metrics.close()
    return summary


def online_postfix(metrics: dict) -> dict:
    """The progress bar of an online stage: score, KL, seconds per iteration."""
    seconds = sum(v for k, v in metrics.items() if k.startswith("time_"))
    return {"score": f"{metrics['score_mean']:.3f}", "kl": f"{metrics['kl_mean']:.3f}",
            "s_it": f"{seconds:.1f}"}
