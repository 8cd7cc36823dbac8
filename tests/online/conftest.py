"""Fixtures of the online tests: a tiny reward model folder."""
import json

import pytest

from rlhfkit.models import load_scalar_model
from rlhfkit.models.scoring import STATS_FILE


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory, tokenizer):
    """A final/ folder as `rlhfkit rm` writes it: tiny-llama scorer, tokenizer, stats (a mean
    and std that make normalize=True change every score)."""
    folder = tmp_path_factory.mktemp("rm") / "final"
    load_scalar_model("tiny-llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stats = {"mean": 0.25, "std": 2.0, "count": 0, "source": "test", "template": "auto",
             "system_prompt": "", "max_prompt_length": 256, "max_length": 512}
    (folder / STATS_FILE).write_text(json.dumps(stats))
    return str(folder)
