"""Reward models on an encoder backbone (BERT-style, like the bundled all-MiniLM-L6-v2): [CLS]
text [SEP] encoding, pooled scores, freezing, the head's learning rate, training to 100% on the
separable toy set, and scoring from final/. A tiny random BERT with MiniLM's tokenizer keeps it
fast."""
import pytest
import torch

from rlhfkit.data import encode
from rlhfkit.models import MINILM, load_scalar_model
from rlhfkit.models.forward import sequence_scores, token_scores
from rlhfkit.models.scoring import RewardScorer
from rlhfkit.trainers import common, reward
from tests.trainers.test_reward import rm_config, toy_rows, write_jsonl


def test_minilm_alias_loads_a_pretrained_encoder(bert_tokenizer):
    model = load_scalar_model(MINILM, bert_tokenizer)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.num_labels == 1


def test_encoder_text_is_cls_text_sep(bert_tokenizer):
    tok = bert_tokenizer
    prompt_free = encode(tok, "", "a great film", max_prompt_length=8, max_length=16)
    assert prompt_free.prompt_ids == [tok.cls_token_id]
    assert prompt_free.response_ids[-1] == tok.sep_token_id
    assert tok.decode(prompt_free.response_ids[:-1]) == "a great film"
    cut = encode(tok, "one two three four", "ok", max_prompt_length=3, max_length=16)
    assert cut.prompt_ids[0] == tok.cls_token_id and len(cut.prompt_ids) == 3
    assert tok.decode(cut.prompt_ids[1:]) == "three four"  # cut from the left, after [CLS]


def test_encoder_scores_are_pooled_and_padding_free(tiny_bert, bert_tokenizer, device):
    model = load_scalar_model(tiny_bert, bert_tokenizer).to(device).eval()
    seqs = [encode(bert_tokenizer, "", text, 8, 32, True) for text in
            ("a long and rather great film", "awful", "the plot was okay")]
    with torch.no_grad():
        batched, _ = reward.score_lists(model, [seqs], bert_tokenizer.pad_token_id, device)
        alone = [model(input_ids=torch.tensor([s.prompt_ids + s.response_ids],
                                              device=device)).logits[0, 0]
                 for s in seqs]
    torch.testing.assert_close(batched[0], torch.stack(alone), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="critic needs a decoder"):
        ids = torch.tensor([seqs[0].prompt_ids + seqs[0].response_ids], device=device)
        token_scores(model, ids, torch.ones_like(ids, dtype=torch.bool))


def test_encoder_freeze_and_head_learning_rate(tmp_path, tiny_bert, bert_tokenizer):
    config = rm_config(tmp_path, "x.jsonl", "", f"model.name={tiny_bert}", "rm.freeze_layers=1",
                       "rm.head_learning_rate=0.05")
    model = reward.build_model(common.start_run(config), config, bert_tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("bert.embeddings", "bert.encoder.layer.0.")) for n in trainable)
    assert any(n.startswith("bert.encoder.layer.1.") for n in trainable)
    groups = reward.make_optimizer(model, config).param_groups
    assert [g["lr"] for g in groups] == [3e-3, 0.05]
    assert groups[1]["params"] == [model.classifier.weight, model.classifier.bias]


def test_encoder_rm_learns_toy_set_and_scores_from_final(tmp_path, tiny_bert, bert_tokenizer,
                                                         device, on_device):
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(48, seed=1))
    held = write_jsonl(tmp_path / "eval.jsonl", toy_rows(16, seed=2))
    config = rm_config(tmp_path, train, held, *on_device, f"model.name={tiny_bert}",
                       "train.max_steps=60", "train.eval_every=60")
    last = reward.run(config)
    assert last["eval_pair_accuracy"] == 1.0
    scorer = RewardScorer.from_pretrained(tmp_path / "run" / "final", device=device,
                                          dtype="float32")
    good, bad = scorer([""] * 2, ["the film was great", "the film was awful"])
    assert good > bad
    ids = torch.tensor([[bert_tokenizer.cls_token_id]
                        + bert_tokenizer("the film was great", add_special_tokens=False)["input_ids"]
                        + [bert_tokenizer.sep_token_id]], device=device)
    with torch.no_grad():
        direct = sequence_scores(scorer.model, ids, torch.ones_like(ids, dtype=torch.bool))
    assert good == pytest.approx(float(direct[0]), abs=1e-5)
