"""Online RL: the policy samples, is scored and is updated in a loop (PPO, GRPO).

- ``roles``: the four roles (policy, value_model, reward_model, ref_policy) built from config.
- ``rewards``: reward sources (reward-model folders, Python functions) and their weighted sum.
- ``rollout``: generation of responses with the project's own decode loop, rollout logs.
- ``loop``: the settings both stages share, the scoring pass, held-out evaluation, the loop.
- ``ppo``, ``grpo``: each stage's config and one iteration.
"""
