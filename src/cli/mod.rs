//! One file per subcommand: its clap arguments and a `run` that wires library calls. No logic worth testing.

pub mod advantage;
pub mod bench;
pub mod bench_rl;
pub mod compare;
pub mod export;
pub mod generate;
pub mod loss;
pub mod score;
pub mod train;
