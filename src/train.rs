//! The RL loop: rollout → reward → advantage → old log-probs → ppo_epochs over mini-batches → AdamW.
//! Also the SFT warm start, the optimizer and schedule, checkpoints and resume.
