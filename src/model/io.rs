//! Loading an HF directory or a GGUF file into a trainable model, and saving an HF directory.

use super::{chat::ChatTemplate, tokenizer::Tok, Config, Transformer};
use candle_nn::VarMap;

/// A model ready to train or sample: weights (as `Var`s in `varmap`), tokenizer and chat template.
pub struct LoadedModel {
    /// Parsed configuration.
    pub config: Config,
    /// The network.
    pub model: Transformer,
    /// The trainable parameters, by HF name.
    pub varmap: VarMap,
    /// The tokenizer.
    pub tokenizer: Tok,
    /// The chat template, when the checkpoint has one.
    pub chat_template: Option<ChatTemplate>,
}
