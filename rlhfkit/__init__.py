"""rlhfkit: SFT, reward models from rankings, PPO, DPO and the human-feedback loop."""
__version__ = "0.1.0"
