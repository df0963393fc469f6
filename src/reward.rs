//! Rewards: verifiers (answer extraction and equivalence) and shaping terms (format, DAPO soft overlong penalty).
//!
//! CONTRACT (used by `train`): `RewardConfig` (serde) and
//! `score(&RewardConfig, verifier, response_text, answer, response_len_tokens, truncated) -> RewardBreakdown`.

/// The reward of one response, term by term.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RewardBreakdown {
    /// 1 if the extracted answer is correct, else 0.
    pub accuracy: f64,
    /// Format term (0 when off).
    pub format: f64,
    /// DAPO soft overlong penalty (≤ 0; 0 when off).
    pub overlong: f64,
    /// Sum of the terms.
    pub total: f64,
}
