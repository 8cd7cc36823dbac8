"""The package's docstrings describe the tree as it is (rlhfkit/__init__.py,
rlhfkit/trainers/__init__.py): every stage the CLI runs, and where each lives."""
from pathlib import Path

import rlhfkit
import rlhfkit.trainers
from rlhfkit.cli import STAGES

NAMES = {"sft": "SFT", "rm": "reward model", "dpo": "DPO", "ppo": "PPO", "grpo": "GRPO",
         "demo": None, "loop": None}


def test_root_docstring_names_every_training_stage_and_package():
    first = rlhfkit.__doc__.splitlines()[0]
    assert set(NAMES) == set(STAGES)
    for stage, name in NAMES.items():
        assert name is None or name in first, (stage, first)
    root = Path(rlhfkit.__file__).parent
    for package in root.glob("*/__init__.py"):
        assert f"``{package.parent.name}``" in rlhfkit.__doc__, package.parent.name


def test_trainers_docstring_names_its_modules_and_where_the_online_stages_are():
    doc = rlhfkit.trainers.__doc__
    folder = Path(rlhfkit.trainers.__file__).parent
    for path in folder.glob("*.py"):
        if path.stem != "__init__":
            assert f"``{path.stem}``" in doc, path.stem
    online = [stage for stage, (module, _) in STAGES.items() if module.startswith("rlhfkit.online.")]
    assert sorted(online) == ["grpo", "ppo"]
    assert "rlhfkit/online/" in doc and "PPO" in doc and "GRPO" in doc  # pointed to
