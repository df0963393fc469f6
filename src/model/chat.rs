//! Chat templates rendered with minijinja, as HF transformers renders them.

/// A compiled chat template with the special tokens it may reference.
pub struct ChatTemplate {
    /// The Jinja source.
    pub source: String,
    /// `bos_token` string passed to the template.
    pub bos_token: String,
    /// `eos_token` string passed to the template.
    pub eos_token: String,
}
