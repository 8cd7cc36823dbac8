"""Trackers through accelerate (train.report_to), the model card of final/, hub.push_to_hub.

One tiny SFT run (3 steps, held-out split) is shared by the TensorBoard, model-card and push
tests; wandb gets its own offline run when it is installed (the optional `trackers` extra).
"""
import json
import os

import pytest

from rlhfkit.config import TRACKERS, ConfigError, load_config
from rlhfkit.trainers import common, model_card, sft

TINY = "examples/sft_tiny.yaml"


def config(repo_root, out, *overrides):
    return load_config(sft.SFTConfig, str(repo_root / TINY),
                       [f"output_dir={out}", f"data.train_path={repo_root}/data/tiny/sft.jsonl",
                        "train.max_steps=3", "train.eval_every=0", "train.save_every=0",
                        *overrides])


class FakeHfApi:
    """Records what push_final asks of the Hub; nothing leaves the machine."""
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        # the folder is complete when it is uploaded: weights, tokenizer and card
        names = sorted(p.name for p in __import__("pathlib").Path(kwargs["folder_path"]).iterdir())
        FakeHfApi.calls.append(("upload_folder", names, kwargs))
        return "https://huggingface.co/fake/commit/0"


@pytest.fixture(scope="module")
def tracked_run(repo_root, tmp_path_factory):
    """Tiny SFT run with report_to=tensorboard and hub.push_to_hub against FakeHfApi."""
    monkeypatch = pytest.MonkeyPatch()
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    out = tmp_path_factory.mktemp("tracked") / "sft_run"
    try:
        sft.run(config(repo_root, out, "train.report_to=tensorboard", "hub.push_to_hub=true",
                       "hub.model_id=someone/tiny-sft", "hub.private=true"))
    finally:
        monkeypatch.undo()
    return out


def test_tracker_names_are_accelerates():
    from accelerate.utils import LoggerType

    assert set(TRACKERS) == {t.value for t in LoggerType} - {"all"}


def test_report_to_takes_tracker_names_only(repo_root, tmp_path):
    assert config(repo_root, tmp_path, "train.report_to=tensorboard,wandb"
                  ).train.report_to == ("tensorboard", "wandb")
    assert config(repo_root, tmp_path, "train.report_to=").train.report_to == ()
    with pytest.raises(ConfigError, match=r"train\.report_to='tensorbord' is invalid"):
        config(repo_root, tmp_path, "train.report_to=tensorboard,tensorbord")


def test_tensorboard_events_hold_the_metrics_jsonl_values(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = common.read_metrics(tracked_run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # step 0: held-out loss before training
    events = EventAccumulator(str(tracked_run / "tensorboard" / "rlhfkit"))
    events.Reload()
    expected = {}
    for row in rows:
        for key, value in row.items():
            if key != "step":
                expected.setdefault(key, []).append((row["step"], value))
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, points in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in logged] == [s for s, _ in points], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in points], rel=1e-6), key


def test_no_tracker_writes_metrics_jsonl_only(repo_root, tmp_path):
    out = tmp_path / "plain"
    sft.run(config(repo_root, out, "train.report_to=", "train.max_steps=1"))
    assert [r["step"] for r in common.read_metrics(out)] == [0, 1]
    assert not (out / "tensorboard").exists()


def test_final_has_a_model_card(tracked_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(tracked_run / "final" / "README.md")
    assert card.data.tags == ["rlhfkit", "sft"] and card.data.library_name == "transformers"
    assert card.data.base_model is None  # tiny-llama is an alias, not a Hub id
    text = card.text
    last = common.read_metrics(tracked_run)[-1]
    assert "A `sft` model trained with [rlhfkit]" in text and "from `tiny-llama`" in text
    assert f"- train: `{tracked_run.parents[2]}" not in text  # the path given, not rewritten
    assert "data/tiny/sft.jsonl`" in text and "0.125 of the training rows" in text
    assert "| `train.learning_rate` | `0.003` |" in text and "| `train.max_steps` | `3` |" in text
    assert "| `sft.sample_max_new_tokens` | `48` |" in text  # the stage's own part
    assert f"## Final metrics (step {last['step']}," in text
    assert f"| loss | {last['loss']:.6g} |" in text
    assert f"| eval_loss | {last['eval_loss']:.6g} |" in text
    import rlhfkit

    assert f"rlhfkit/) {rlhfkit.__version__}" in text


def test_model_card_names_a_hub_base_model(repo_root, tmp_path):
    cfg = config(repo_root, tmp_path / "x", "model.name=HuggingFaceTB/SmolLM2-135M-Instruct")
    card = model_card.model_card(cfg, {"step": 7, "loss": 0.5})
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "## Final metrics (step 7," in card.text and "| loss | 0.5 |" in card.text


def test_push_to_hub_uploads_final(tracked_run):
    (create, repo_id, create_kwargs), (upload, names, upload_kwargs) = FakeHfApi.calls
    assert (create, repo_id) == ("create_repo", "someone/tiny-sft")
    assert create_kwargs == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert upload == "upload_folder"
    assert upload_kwargs == {"repo_id": "someone/tiny-sft",
                             "folder_path": str(tracked_run / "final"), "repo_type": "model",
                             "commit_message": "rlhfkit sft: final model"}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(names)


def test_push_to_hub_needs_a_model_id(repo_root, tmp_path):
    with pytest.raises(ConfigError, match=r"hub\.model_id='' is invalid: expected a repository"):
        config(repo_root, tmp_path, "hub.push_to_hub=true")


def test_wandb_offline_writes_a_run_folder(repo_root, tmp_path, monkeypatch):
    if os.environ.get("CI") == "true":
        import wandb  # noqa: F401  (CI installs the trackers extra: a missing wandb fails there)
    else:
        pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a send would fail, not leave
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wandb_run"
    sft.run(config(repo_root, out, "train.report_to=wandb", "train.max_steps=2"))
    runs = list((out / "wandb").glob("offline-run-*"))  # offline: a run folder, to `wandb sync`
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")
    # wandb 0.31 has no Python reader for its transaction log; history values sit in it as the
    # JSON text of each value (protobuf strings), so every metrics.jsonl value must be there.
    data = log.read_bytes()
    for row in common.read_metrics(out):
        for key, value in row.items():
            assert key.encode() in data and json.dumps(value).encode() in data, (key, value)
    assert not (out / "tensorboard").exists()
