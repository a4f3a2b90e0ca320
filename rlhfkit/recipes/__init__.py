"""The training algorithms: sft, reward, dpo (and its family), and the online RL loop (`online`) behind
ppo, grpo and rloo. Each has its config at the top and `run(cfg, out, resume) -> Path`."""
