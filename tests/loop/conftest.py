"""The tiny loop (examples/loop_tiny.yaml) run once per session, shared by the tests that read
its artefacts."""
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/loop_tiny.yaml"


def tiny_overrides(output_dir) -> list[str]:
    return [f"output_dir={output_dir}", f"data.train_path={ROOT / 'data/tiny/prompts.jsonl'}"]


@pytest.fixture(scope="session")
def tiny_example():
    """(examples/loop_tiny.yaml, overrides(output_dir) → the key=value list that runs it into
    output_dir from any working directory)."""
    return EXAMPLE, tiny_overrides


@pytest.fixture(scope="session")
def tiny_loop(tmp_path_factory):
    """(output_dir, seconds, rlhfkit.Result) of the tiny example, uninterrupted, in-process."""
    import rlhfkit
    from rlhfkit.config import load_config
    from rlhfkit.loop.config import LoopConfig

    output_dir = tmp_path_factory.mktemp("loop") / "tiny"
    config = load_config(LoopConfig, str(EXAMPLE), tiny_overrides(output_dir))
    start = time.perf_counter()
    result = rlhfkit.run_loop(config)
    return output_dir, time.perf_counter() - start, result
