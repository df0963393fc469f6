//! Tokenizer wrapper over HF `tokenizers`: from `tokenizer.json`, from GGUF metadata, or char-level for tiny models.

use crate::{input_err, Result};
use std::path::Path;
use tokenizers::{
    decoders::fuse::Fuse, models::bpe::BPE, pre_tokenizers::byte_level::ByteLevel,
    pre_tokenizers::digits::Digits, pre_tokenizers::sequence::Sequence, AddedToken,
    PreTokenizerWrapper,
};

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

impl Clone for Tok {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            eos_ids: self.eos_ids.clone(),
            bos_id: self.bos_id,
            pad_id: self.pad_id,
        }
    }
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok")
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.eos_ids)
            .field("bos_id", &self.bos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Names recognised as roles by [`Tok::char_level`].
const EOS_NAMES: [&str; 5] = ["<eos>", "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"];
const BOS_NAMES: [&str; 3] = ["<bos>", "<s>", "<|begin_of_text|>"];
const PAD_NAMES: [&str; 2] = ["<pad>", "<|pad|>"];

impl Tok {
    /// Wraps a tokenizer with explicit special ids.
    pub fn new(
        inner: tokenizers::Tokenizer,
        eos_ids: Vec<u32>,
        bos_id: Option<u32>,
        pad_id: Option<u32>,
    ) -> Self {
        let pad_id = pad_id.or_else(|| eos_ids.first().copied()).unwrap_or(0);
        Self {
            inner,
            eos_ids,
            bos_id,
            pad_id,
        }
    }

    /// Reads a `tokenizer.json`; special ids are left empty (the caller sets them).
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            input_err!(
                "{}: cannot read tokenizer: {}",
                path.display(),
                one_line(&e.to_string())
            )
        })?;
        Ok(Self::new(inner, vec![], None, None))
    }

    /// Builds the tokenizer stored in GGUF metadata, with the pre-tokenizer corrected to match HF.
    ///
    /// candle's builder uses `ByteLevel(add_prefix_space=true)` for GPT-2-style vocabularies, so "Hello" at the
    /// start of a text becomes " Hello"; HF (and llama.cpp) do not add that space. For `tokenizer.ggml.pre` =
    /// `smollm` the digits are also split one by one, as in SmolLM2's own `tokenizer.json`.
    pub fn from_gguf(
        ct: &candle_core::quantized::gguf_file::Content,
        source: &Path,
    ) -> Result<Self> {
        use candle_core::quantized::tokenizer::TokenizerFromGguf;
        let mut inner = tokenizers::Tokenizer::from_gguf(ct).map_err(|e| {
            input_err!(
                "{}: cannot build tokenizer from GGUF: {}",
                source.display(),
                one_line(&e.to_string())
            )
        })?;
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let gpt2_default = !matches!(pre.as_str(), "qwen2" | "smaug-bpe" | "lfm2" | "llama3");
        if gpt2_default {
            let bl = ByteLevel::new(false, true, true);
            let pt: PreTokenizerWrapper = if pre == "smollm" {
                Sequence::new(vec![Digits::new(true).into(), bl.into()]).into()
            } else {
                bl.into()
            };
            inner.with_pre_tokenizer(Some(pt));
        }
        let get_id = |key: &str| ct.metadata.get(key).and_then(|v| v.to_u32().ok());
        let eos: Vec<u32> = get_id("tokenizer.ggml.eos_token_id").into_iter().collect();
        let bos = get_id("tokenizer.ggml.bos_token_id");
        let pad = get_id("tokenizer.ggml.padding_token_id");
        Ok(Self::new(inner, eos, bos, pad))
    }

    /// A character-level tokenizer: ids `0..specials.len()` are the special tokens in order, then one id per
    /// distinct character of `alphabet` (first occurrence order). Roles come from the names: `<eos>`, `</s>`,
    /// `<|endoftext|>`, `<|im_end|>` are EOS; `<bos>`, `<s>` BOS; `<pad>` padding (else the first EOS); `<unk>`
    /// (if given) replaces unknown characters, which are otherwise an encoding error.
    ///
    /// It is a real `tokenizers` BPE without merges and without pre-tokenizer (so every character is a token)
    /// with a `Fuse` decoder; HF `PreTrainedTokenizerFast` loads its `tokenizer.json` and gives the same ids.
    pub fn char_level(alphabet: &str, specials: &[&str]) -> Result<Self> {
        let mut vocab: Vec<(String, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in specials {
            if s.is_empty() || !seen.insert(s.to_string()) {
                return Err(input_err!(
                    "char-level tokenizer: special token {s:?} is empty or repeated"
                ));
            }
            vocab.push((s.to_string(), vocab.len() as u32));
        }
        for c in alphabet.chars() {
            let s = c.to_string();
            if seen.insert(s.clone()) {
                vocab.push((s, vocab.len() as u32));
            }
        }
        let mut builder = BPE::builder().vocab_and_merges(
            vocab
                .iter()
                .cloned()
                .collect::<tokenizers::models::bpe::Vocab>(),
            vec![],
        );
        if specials.contains(&"<unk>") {
            builder = builder.unk_token("<unk>".into());
        }
        let bpe = builder
            .build()
            .map_err(|e| input_err!("char-level tokenizer: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_decoder(Some(Fuse::new()));
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| input_err!("char-level tokenizer: {e}"))?;
        let find = |names: &[&str]| {
            specials
                .iter()
                .position(|s| names.contains(s))
                .map(|i| i as u32)
        };
        let eos_ids: Vec<u32> = specials
            .iter()
            .enumerate()
            .filter(|(_, s)| EOS_NAMES.contains(s))
            .map(|(i, _)| i as u32)
            .collect();
        let (bos, pad) = (find(&BOS_NAMES), find(&PAD_NAMES));
        Ok(Self::new(inner, eos_ids, bos, pad))
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| input_err!("cannot tokenize text: {}", one_line(&e.to_string())))?;
        let ids = enc.get_ids().to_vec();
        if self.is_char_level() && self.inner.token_to_id("<unk>").is_none() {
            // BPE without an unknown token drops characters it does not know: the offsets then miss bytes.
            let covered: usize = enc.get_offsets().iter().map(|(a, b)| b - a).sum();
            if covered != text.len() {
                let bad = text
                    .chars()
                    .find(|c| self.inner.token_to_id(&c.to_string()).is_none());
                return Err(input_err!(
                    "character {:?} is not in the tokenizer's alphabet",
                    bad.unwrap_or('?')
                ));
            }
        }
        Ok(ids)
    }

    /// Text of `ids`; `skip_special_tokens` drops special tokens such as EOS.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| input_err!("cannot decode token ids: {}", one_line(&e.to_string())))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The EOS token string (the first EOS id), if any.
    pub fn eos_token(&self) -> Option<String> {
        self.eos_ids.first().and_then(|&i| self.id_to_token(i))
    }

    /// The BOS token string, if any.
    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.and_then(|i| self.id_to_token(i))
    }

    /// The padding token string.
    pub fn pad_token(&self) -> Option<String> {
        self.id_to_token(self.pad_id)
    }

    /// Whether this looks like a [`Tok::char_level`] tokenizer (BPE without merges, no pre-tokenizer).
    fn is_char_level(&self) -> bool {
        self.inner.get_pre_tokenizer().is_none()
            && matches!(
                self.inner.get_decoder(),
                Some(tokenizers::DecoderWrapper::Fuse(_))
            )
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| input_err!("cannot serialise tokenizer: {e}"))
    }

    /// Writes `tokenizer.json` to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::write(path, self.to_json()?.as_bytes())
    }
}

/// Collapses a multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
