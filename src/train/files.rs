//! Run-directory files: atomic whole-file writes and append-only JSONL logs that can be cut back to a line count
//! (so that after `--resume` every step appears exactly once).

use crate::{input_err, Error, Result};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Maps an I/O error to a one-line input error naming the path.
pub fn io_err(path: &Path, e: std::io::Error) -> Error {
    input_err!("{}: {e}", path.display())
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    crate::atomic::write(path, text.as_bytes())
}

/// An append-only JSONL file that counts its lines.
pub struct JsonlLog {
    path: PathBuf,
    file: File,
    lines: u64,
}

impl JsonlLog {
    /// Opens `path` for appending after cutting it to its first `keep_lines` lines (creating it when missing).
    /// Fails if the file holds fewer complete lines than `keep_lines`.
    pub fn open_truncated(path: &Path, keep_lines: u64) -> Result<Self> {
        truncate_lines(path, keep_lines)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            lines: keep_lines,
        })
    }

    /// Appends one record as one line.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| io_err(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Flushes to disk (called before a checkpoint records `lines`).
    pub fn sync(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| io_err(&self.path, e))?;
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }

    /// Complete lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

/// Cuts `path` to its first `n` complete lines (a missing file is created empty when `n` = 0).
pub fn truncate_lines(path: &Path, n: u64) -> Result<()> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if n == 0 {
                return Ok(());
            }
            return Err(input_err!(
                "{}: missing, but the checkpoint expects {n} lines",
                path.display()
            ));
        }
        Err(e) => return Err(io_err(path, e)),
    };
    let mut seen = 0u64;
    let mut cut = 0usize;
    if n > 0 {
        let mut found = false;
        for (i, b) in data.iter().enumerate() {
            if *b == b'\n' {
                seen += 1;
                if seen == n {
                    cut = i + 1;
                    found = true;
                    break;
                }
            }
        }
        if !found {
            return Err(input_err!(
                "{}: has {seen} complete lines, but the checkpoint expects {n}",
                path.display()
            ));
        }
    }
    if cut < data.len() {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        f.set_len(cut as u64).map_err(|e| io_err(path, e))?;
        f.sync_all().map_err(|e| io_err(path, e))?;
    }
    Ok(())
}

/// Reads every record of a JSONL file.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| input_err!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// `YYYYmmdd-HHMMSS` in UTC, for default run-directory names.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// 64-bit FNV-1a hash (stable across platforms and Rust versions; used for cache keys and seed derivation).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A seed for stage `stage` derived from the run seed.
pub fn derive_seed(seed: u64, stage: &str) -> u64 {
    let mut bytes = seed.to_le_bytes().to_vec();
    bytes.extend_from_slice(stage.as_bytes());
    fnv1a(&bytes)
}
