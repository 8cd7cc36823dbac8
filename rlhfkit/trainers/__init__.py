"""One module per stage (sft, reward, ppo, dpo): a config, a step function and a loop."""
