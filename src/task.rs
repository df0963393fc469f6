//! Tasks: procedural families with verifiable answers (and worked solutions of varying length), and dataset readers.
//!
//! CONTRACT (used by `train`):
//! - `Problem { id, prompt, answer, .. }` with `prompt` either plain text or chat messages.
//! - `TaskConfig` (serde) selects a family or a file; `build(&TaskConfig) -> Box<dyn Task>`.
//! - `Task::problems(split, n, seed)`: deterministic problems; `Task::demo(problem, style_seed)`: a worked solution
//!   (varying length) for the SFT warm start; `Task::verifier()`: the reward's verifier for this task.

/// A prompt: plain text, or chat messages to render with a chat template.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Plain text given to the model as is.
    Text(String),
    /// Chat messages (`role`, `content`).
    Messages(Vec<Message>),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A problem with its ground-truth answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Stable id (used for grouping and per-prompt analysis).
    pub id: String,
    /// The prompt.
    pub prompt: Prompt,
    /// The ground-truth answer as a string.
    pub answer: String,
}

/// Which split a problem comes from; held-out problems never appear in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training problems.
    Train,
    /// Held-out evaluation problems.
    Eval,
}
