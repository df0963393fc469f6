//! The start of every run, shared by `luspo train`, `luspo sft` and `luspo compare`'s warm-start child: the task,
//! the resolved reward and the freshly initialised policy, built one way so that compare's "same warm start"
//! promise (the warm start depends only on the config and seed) cannot drift between commands.

use super::config::RunConfig;
use super::files::derive_seed;
use super::policy::Policy;
use crate::reward::RewardConfig;
use crate::task::{self, Task};
use crate::Result;

/// What a run starts from.
pub struct Bootstrap {
    /// The task of `[task]`.
    pub task: Box<dyn Task>,
    /// `[reward]` resolved against the rollout length.
    pub reward: RewardConfig,
    /// The policy, initialised from the run seed (not yet warm-started).
    pub policy: Policy,
}

impl Bootstrap {
    /// Builds the task, the reward and the initial policy of `cfg`.
    pub fn new(cfg: &RunConfig) -> Result<Bootstrap> {
        let task = task::build(&cfg.task)?;
        let reward = cfg.reward_resolved()?;
        let policy = Policy::build(cfg, task.as_ref(), derive_seed(cfg.seed, "init"))?;
        Ok(Bootstrap {
            task,
            reward,
            policy,
        })
    }
}
