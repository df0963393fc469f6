//! `luspo export`: a model (HF directory, luspo run output or GGUF) to a GGUF file llama.cpp loads.

use crate::export::{export_gguf, GgufDType};
use std::path::PathBuf;

/// Arguments of `luspo export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// HF model directory (e.g. a run's `final/`) or `.gguf` file.
    #[arg(long)]
    pub model: PathBuf,
    /// The GGUF file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Element type of the 2-D weights (norms stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: GgufDType,
}

/// Runs `luspo export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let m = crate::model::io::load(&args.model, &candle_core::Device::Cpu)?;
    export_gguf(&m, &args.out, args.dtype)?;
    eprintln!("wrote {} ({:?})", args.out.display(), args.dtype);
    Ok(())
}
