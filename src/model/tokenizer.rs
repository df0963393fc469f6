//! Tokenizer wrapper over HF `tokenizers`: from `tokenizer.json`, from GGUF metadata, or char-level for tiny models.

/// A tokenizer plus its special tokens.
pub struct Tok {
    /// The HF tokenizer.
    pub inner: tokenizers::Tokenizer,
    /// End-of-sequence ids.
    pub eos_ids: Vec<u32>,
    /// Beginning-of-sequence id, if the model uses one.
    pub bos_id: Option<u32>,
    /// Padding id.
    pub pad_id: u32,
}
