//! The library's error type: every user mistake is an `Error::Input` with one line naming the culprit.

/// Errors raised by the luspo library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user (file, key, tensor, value): one line that names the problem.
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON could not be parsed or written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an `Error::Input` from a format string: `bail_input!("{}: missing key `x`", path)`.
#[macro_export]
macro_rules! input_err {
    ($($arg:tt)*) => { $crate::error::Error::Input(format!($($arg)*)) };
}
