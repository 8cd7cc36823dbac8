"""The offline stages, one module each: ``sft``, ``reward`` (reward models from rankings) and
``dpo`` (with ``dpo_reference``: the reference log-probs, precomputed, a frozen copy or the
adapter switched off), each a config, a step function and a ``run``; what they share: ``common``
(the run, optimiser, accumulate-and-step, metrics), ``checkpoints`` (save, resume, frozen
weights left out), ``loop`` (the stage loop, written once) and ``model_card`` (the card of
``final/`` and its push to the Hub).

The online stages, PPO and GRPO, sample from the policy as they train: they live one layer up,
in rlhfkit/online/ (roles, rewards, rollout, the online loop, ``ppo``, ``grpo``).
"""
