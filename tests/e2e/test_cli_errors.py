"""User errors through the installed CLI: exit 2, one line naming what was wrong (file:line,
key, what was expected), never a Python traceback (rlhfkit/cli.py)."""
import os
import subprocess
import sys

import pytest


def rlhfkit(repo_root, tmp_path, *args, env=None):
    """``python -m rlhfkit ARGS`` from the repository root → (exit code, stderr)."""
    result = subprocess.run([sys.executable, "-m", "rlhfkit", *args, f"output_dir={tmp_path}/out"],
                            cwd=repo_root, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, **(env or {})))
    return result.returncode, result.stderr


def assert_one_line_error(code, stderr, *expected):
    """Exit 2 and one message line; besides it stderr holds only the progress bar (tqdm's
    ``stage:  0%|…`` lines, when the error comes mid-run): no traceback, no library warning."""
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr[-3000:]
    assert code == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("rlhfkit "), stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_invalid_utf8_names_file_and_line(repo_root, tmp_path):
    data = tmp_path / "x.jsonl"
    data.write_bytes(b'{"prompt":"a","response":"b"}\n{"prompt":"a","response":"\xff"}\n')
    code, stderr = rlhfkit(repo_root, tmp_path, "sft", "--config", "examples/sft_tiny.yaml",
                           f"data.train_path={data}")
    assert_one_line_error(code, stderr, f"{data}:2", "UTF-8")


def test_unimportable_reward_function(repo_root, tmp_path):
    code, stderr = rlhfkit(repo_root, tmp_path, "ppo", "--config", "examples/ppo_tiny.yaml",
                           "reward.function=rlhfkit.nope:f")
    assert_one_line_error(code, stderr, "reward.function='rlhfkit.nope:f'")


def test_reward_function_returning_the_wrong_count(repo_root, tmp_path):
    (tmp_path / "shortreward.py").write_text(
        "def one(prompts, responses):\n    return [1.0]\n")
    code, stderr = rlhfkit(repo_root, tmp_path, "ppo", "--config", "examples/ppo_tiny.yaml",
                           "reward.function=shortreward:one", "train.max_steps=1",
                           "train.batch_size=4", "ppo.minibatches=1",
                           env={"PYTHONPATH": str(tmp_path)})
    assert_one_line_error(code, stderr, "shortreward:one returned 1 values for 4 responses")


@pytest.mark.parametrize("folder", ["empty", "config_only"])
def test_model_folder_without_a_tokenizer(repo_root, tmp_path, folder):
    model = tmp_path / folder
    model.mkdir()
    if folder == "config_only":
        (model / "config.json").write_text('{"model_type": "llama"}')
    code, stderr = rlhfkit(repo_root, tmp_path, "sft", "--config", "examples/sft_tiny.yaml",
                           f"model.name={model}")
    assert_one_line_error(code, stderr, f"cannot load tokenizer '{model}'", "tokenizer")


def test_chat_template_required_but_missing(repo_root, tmp_path):
    code, stderr = rlhfkit(repo_root, tmp_path, "sft", "--config", "examples/sft_tiny.yaml",
                           "model.name=all-minilm-l6-v2", "data.template=chat")
    assert_one_line_error(code, stderr, "data.template='chat'", "no chat template")
