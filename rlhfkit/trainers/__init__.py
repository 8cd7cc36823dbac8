"""The offline stages, one module each: ``sft``, ``reward`` (reward models from rankings) and
``dpo``, each a config, a step function and a ``run``; what they share: ``common`` (the run,
optimiser, metrics, checkpoints) and ``loop`` (the stage loop, written once).

The online stages, PPO and GRPO, sample from the policy as they train: they live one layer up,
in rlhfkit/online/ (roles, rewards, rollout, the online loop, ``ppo``, ``grpo``).
"""
