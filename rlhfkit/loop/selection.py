"""Which sampled prompts a round ranks (``selection``, step 1 of rlhfkit/loop/rounds.py).

- ``random``: a seeded sample (``rounds.select_tasks``; round 0 always, it has no reward model).
- ``uncertainty``: the smallest gap |r_i − r_j| between RM_{r−1}'s scores of a prompt's
  candidates first (``label/sources.py::smallest_gap``, the store's ``order: uncertainty``).
- ``ensemble``: the largest disagreement of a small ensemble of reward models about the
  candidates' pairwise preferences first (``ops/ranking.py::pair_disagreement``).

The ensemble. M members share RM_{r−1}'s encoder and differ in their last layer: member m's
score is φ(x)·w_m, with φ(x) (H,) what RM_{r−1}'s linear score head reads (``head_features``)
and w_m fitted on a bootstrap resample of the rankings RM_{r−1} was trained on, by the rm
stage's ranking loss plus ½·λ·‖w − w_{r−1}‖², from and towards RM_{r−1}'s own head (the warm
start; ``ops/ranking.py::fit_head``). So the loop still trains one reward model a round; the members cost one
forward pass of the candidates and of the labelled rankings through RM_{r−1} (the pass
``uncertainty`` makes anyway, plus the labelled ones) and M fits of H weights — no transformer
is trained for them. The price: members that share a torso disagree less than independently
fine-tuned ones (Gleave & Irving 2022, arXiv 2203.07472), so this measures the head's
uncertainty given RM_{r−1}'s features, not the encoder's.

The disagreement is BALD (Houlsby et al. 2011, arXiv 1112.5745) on each pair of distinct
candidates, summed over the task's pairs: I_ij = H(p̄_ij) − (1/M) Σ_m H(p_m,ij), with
p_m,ij = σ(s_m,i − s_m,j) and H the binary entropy (nats) — the information a label of the pair
carries about which member is right. Why not the score gap: a pair that every member finds a
coin toss (p ≈ ½ for all m; the annotator's own noise, e.g. two continuations the judge finds
equally good) has I = 0, whereas the smallest gap ranks it first; a task is picked where the
members are each sure and disagree. Tests: tests/loop/test_selection.py, the math in
tests/ops/test_ranking.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.label.sources import distinct_index
from rlhfkit.ops.ranking import fit_head, pair_disagreement


# ----------------------------------------------------------------------------- features
def linear_head(model) -> torch.nn.Linear:
    """The linear layer that writes a reward model's score: a decoder's ``score`` head, an
    encoder's ``classifier`` (or its ``out_proj``)."""
    from rlhfkit.models.forward import score_head

    head = score_head(model) or getattr(model, "classifier", None)
    head = getattr(head, "out_proj", head)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"selection: ensemble needs a reward model whose score is one linear "
                         f"layer (score or classifier); {type(model).__name__} has none")
    return head


@torch.no_grad()
def head_features(scorer, messages_list: list, responses: list[str]):
    """(features (N, H) float64, weight (H,) float64, bias float): what the scorer's linear head
    reads for each (prompt, response), read through hooks on the scorer's own forward
    (``RewardScorer.score_messages``: the same rendering and pooling); a decoder's features are
    taken at the last real token, as ``sequence_scores`` reads its score. Checked: features ·
    weight + bias gives the scorer's scores (tests/loop/test_selection.py)."""
    from rlhfkit.models.forward import last_token_index

    head = linear_head(scorer.model)
    inputs, masks = [], []
    hooks = [head.register_forward_hook(lambda m, args, out: inputs.append(args[0])),
             scorer.model.register_forward_pre_hook(
                 lambda m, args, kwargs: masks.append(kwargs["attention_mask"]),
                 with_kwargs=True)]
    try:
        scores = scorer.score_messages(messages_list, responses)
    finally:
        for hook in hooks:
            hook.remove()
    rows = []
    for x, mask in zip(inputs, masks):
        if x.ndim == 3:  # (B, T, H) → (B, H) at the last real token
            x = x[torch.arange(x.shape[0]), last_token_index(mask)]
        rows.append(x.double())
    features = torch.cat(rows) if rows else torch.zeros(0, head.in_features, dtype=torch.float64)
    weight = head.weight.detach().double()[0]
    bias = float(head.bias.detach()[0]) if head.bias is not None else 0.0
    gap = (features @ weight + bias - torch.tensor(scores, dtype=torch.float64)).abs()
    if len(scores) and float(gap.max()) > 1e-3 * (1 + max(abs(s) for s in scores)):
        raise ValueError(f"selection: ensemble could not read {type(scorer.model).__name__}'s "
                         f"score head (features · weight off by {float(gap.max()):.3g})")
    return features, weight, bias


# ----------------------------------------------------------------------------- the strategies
def split_scores(flat: list, samples: list[list[str]], usable: list[int]) -> dict[int, list]:
    """Flat per-candidate values (in ``usable`` then candidate order) → {prompt index: its}."""
    out, start = {}, 0
    for i in usable:
        out[i] = flat[start:start + len(samples[i])]
        start += len(samples[i])
    return out


def by_smallest_gap(config, r: int, reward_model: Path, train_path: Path, messages: list,
                    samples: list[list[str]], usable: list[int]):
    """uncertainty → ({i: its smallest score gap}, {i: RM_{r−1} scores}): smallest first."""
    from rlhfkit.label.sources import smallest_gap
    from rlhfkit.models.scoring import RewardScorer

    scorer = RewardScorer.from_pretrained(reward_model, config.model.device)
    scores = split_scores(scorer.score_messages([messages[i] for i in usable for _ in samples[i]],
                                                [t for i in usable for t in samples[i]]),
                          samples, usable)
    return {i: smallest_gap([scores[i][j] for j in distinct_index(samples[i])])
            for i in usable}, scores


def labelled_features(scorer, rows: list[dict]):
    """Ranked rows (the rm stage's train.jsonl) → features (B, K, H), list_mask (B, K), ranks
    (B, K), each list padded to the longest with masked slots."""
    flat, _, _ = head_features(scorer, [(("user", row["prompt"]),) for row in rows
                                        for _ in row["responses"]],
                               [text for row in rows for text in row["responses"]])
    k = max(len(row["responses"]) for row in rows)
    features = torch.zeros(len(rows), k, flat.shape[1], dtype=torch.float64)
    list_mask = torch.zeros(len(rows), k, dtype=torch.bool)
    ranks = torch.full((len(rows), k), k + 1, dtype=torch.long)
    start = 0
    for b, row in enumerate(rows):
        n = len(row["responses"])
        features[b, :n], list_mask[b, :n] = flat[start:start + n], True
        ranks[b, :n] = torch.tensor(row["ranks"])
        start += n
    return features, list_mask, ranks


def ensemble_heads(config, features, list_mask, ranks, prior, r: int) -> torch.Tensor:
    """ensemble_size heads (M, H), each fitted on its own bootstrap resample of the labelled
    lists (seeded by seed, round and member)."""
    heads = []
    for m in range(config.ensemble_size):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + r * 1009 + m)
        pick = torch.randint(features.shape[0], (features.shape[0],), generator=generator)
        heads.append(fit_head(features[pick], list_mask[pick], ranks[pick], prior,
                              config.ensemble_l2))
    return torch.stack(heads)


def by_disagreement(config, r: int, reward_model: Path, train_path: Path, messages: list,
                    samples: list[list[str]], usable: list[int]):
    """ensemble → ({i: −pair_disagreement}, {i: RM_{r−1} scores}): the largest disagreement
    first. The members are fitted on ``train_path``, RM_{r−1}'s own training rankings."""
    from rlhfkit.models.scoring import RewardScorer

    scorer = RewardScorer.from_pretrained(reward_model, config.model.device)
    flat, weight, bias = head_features(scorer, [messages[i] for i in usable for _ in samples[i]],
                                       [t for i in usable for t in samples[i]])
    rows = [json.loads(line) for line in Path(train_path).read_text().splitlines() if line]
    heads = ensemble_heads(config, *labelled_features(scorer, rows), weight, r) if rows else \
        weight[None]  # nothing labelled: one member, no disagreement (random order by index)
    member_scores = split_scores(list(flat @ heads.T), samples, usable)  # (M,) per candidate
    scores = split_scores((flat @ weight + bias).tolist(), samples, usable)
    priority = {}
    for i in usable:
        kept = torch.stack([member_scores[i][j] for j in distinct_index(samples[i])], 1)
        priority[i] = -float(pair_disagreement(kept))  # (M, K) → (); largest first
    return priority, scores


# selection → priority(config, r, RM_{r−1}'s folder, its train.jsonl, messages, samples, usable)
# → ({prompt index: key, smallest first}, {prompt index: RM_{r−1}'s scores of its candidates})
PRIORITIES = {"uncertainty": by_smallest_gap, "ensemble": by_disagreement}
