"""Shared fixtures: the SmolLM2 tokenizer (tiny-llama uses it) and small helpers."""
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.allocator import keep_freed_memory

torch.set_num_threads(min(2, os.cpu_count() or 1))
# As a notebook gets it from the first stage it runs: glibc keeps freed blocks in the process
# (rlhfkit/allocator.py), here from the first test on, ops and model tests included.
keep_freed_memory()


class BenchModules(importlib.abc.MetaPathFinder):
    """``import bench_NAME`` in a test loads bench/NAME.py (bench/ holds scripts, not a
    package): tests test the bench's own code, e.g. tests/label/test_load.py drives the live
    server and clients of bench/label.py, tests/loop/test_selection_bench.py checks
    bench/selection.py."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("bench_"):
            return None
        file = Path(__file__).resolve().parents[1] / "bench" / f"{fullname[len('bench_'):]}.py"
        return importlib.util.spec_from_file_location(fullname, file) if file.is_file() else None


sys.meta_path.append(BenchModules())

# Every device-dependent test runs once per device: the CPU always, CUDA where there is one, so
# the same suite checks the GPU path on a machine that has a GPU (scripts/gpu_check.sh selects
# the CUDA runs with ``-k cuda``). RLHFKIT_TEST_DEVICES=cpu,cuda overrides the list.
DEVICES = [d for d in os.environ.get("RLHFKIT_TEST_DEVICES", "").split(",") if d] or \
    ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The device a test runs on ("cpu", "cuda"): pass it as ``model.device`` (``on_device``)
    or move the test's tensors and models there with ``.to(device)``. Its ids (``[cpu]``,
    ``[cuda]``) are what ``-k cuda`` selects; tests/test_devices.py checks the wiring."""
    return request.param


@pytest.fixture
def on_device(device) -> tuple[str, ...]:
    """Stage overrides that run a test on ``device`` in float32: "auto" would pick bfloat16 on
    CUDA, and the tests' tolerances are float32's (bf16 runs: scripts/gpu_check.sh)."""
    return (f"model.device={device}", "model.dtype=float32")


@pytest.fixture(scope="session")
def tokenizer():
    from rlhfkit.models import load_tokenizer

    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bert_tokenizer():
    from rlhfkit.models import MINILM, load_tokenizer

    return load_tokenizer(MINILM)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, bert_tokenizer):
    """Folder of a 2-layer random BERT scorer with all-MiniLM-L6-v2's tokenizer: an encoder
    reward model in miniature."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=1)
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return str(folder)
