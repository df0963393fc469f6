//! luspo: reinforcement learning with verifiable rewards (RLVR) for language models.
//!
//! The library holds everything; `main.rs` only parses arguments and wires these modules together.
//! Module map and conventions: see the README and `DESIGN.md` in the shared folder.

pub mod advantage;
pub mod atomic;
pub mod cli;
pub mod compare;
pub mod control;
pub mod error;
pub mod metrics;
pub mod model;
pub mod objective;
pub mod ops;
pub mod report;
pub mod reward;
pub mod rollout;
pub mod task;
pub mod train;

pub use error::{Error, Result};
