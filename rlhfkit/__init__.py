"""rlhfkit: SFT, reward models from rankings, DPO, PPO, GRPO and the human-feedback loop.

Packages, lowest layer first: ``ops`` and ``data`` → ``models`` → ``trainers`` (SFT, reward
models, DPO) → ``online`` (PPO, GRPO) → ``label`` (human feedback) → ``demo``; the root holds
the entry points (tests/test_layers.py).
"""
__version__ = "0.1.0"
