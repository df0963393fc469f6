//! The trainer's checks against other modules' config types, kept in one place.

/// Checks the `[task]` and `[reward]` tables against their owners' config types.
pub(crate) fn check_task_and_reward(
    task: &toml::Table,
    reward: &toml::Table,
) -> Result<(), String> {
    let _: crate::task::TaskConfig = toml::Value::Table(task.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    let _: crate::reward::RewardConfig = toml::Value::Table(reward.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    Ok(())
}
