//! TensorBoard event files (`<run>/tb/events.out.tfevents.*`): every numeric field of `metrics.jsonl` (as
//! `train/<key>`) and `eval.jsonl` (as `eval/<key>`) as a scalar, written as the run goes.
//!
//! The format is TensorFlow's TFRecord of `Event` protos: each record is `u64 length`, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes. An `Event` is `wall_time` (field 1, double), `step` (2, int64)
//! and either `file_version` (3, string) or a `Summary` (5) of `Value`s {`tag` (1, string), `simple_value` (2,
//! float)}. Only these fields are written, so the protobuf encoding is done here by hand; [`read_scalars`] is the
//! matching reader (used by the tests and `luspo report`-style tooling).

use crate::{input_err, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open event file.
pub struct TbWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn event(step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut e = vec![0x09];
    e.extend_from_slice(&wall.to_le_bytes());
    varint(&mut e, 2 << 3);
    varint(&mut e, step as u64);
    body(&mut e);
    e
}

impl TbWriter {
    /// Starts a fresh event file in `dir`, removing older event files there (the caller replays what the
    /// logs already hold, so after a resume the event files match `metrics.jsonl` and `eval.jsonl` exactly).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| input_err!("{}: cannot create: {e}", dir.display()))?;
        let entries = std::fs::read_dir(dir).map_err(|e| input_err!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let path = dir.join(format!(
            "events.out.tfevents.{secs}.luspo.{}",
            std::process::id()
        ));
        let file = std::fs::File::create(&path)
            .map_err(|e| input_err!("{}: cannot write: {e}", path.display()))?;
        let mut w = Self {
            file: std::io::BufWriter::new(file),
            path,
        };
        let first = event(0, |e| bytes_field(e, 3, b"brain.Event:2"));
        w.record(&first)?;
        w.flush()?;
        Ok(w)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .map_err(|e| input_err!("{}: cannot write: {e}", self.path.display()))
    }

    /// Writes one event at `step` with a scalar `prefix/key` per numeric top-level field of `record` (a JSON
    /// object; `step` itself and non-numbers are skipped).
    pub fn scalars<T: serde::Serialize>(
        &mut self,
        prefix: &str,
        step: u64,
        record: &T,
    ) -> Result<()> {
        let v = serde_json::to_value(record)?;
        let Some(obj) = v.as_object() else {
            return Ok(());
        };
        let mut summary = vec![];
        for (k, x) in obj {
            let Some(x) = x.as_f64().filter(|_| k != "step") else {
                continue;
            };
            let mut val = vec![];
            bytes_field(&mut val, 1, format!("{prefix}/{k}").as_bytes());
            val.push(0x15);
            val.extend_from_slice(&(x as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &val);
        }
        let e = event(step as i64, |e| bytes_field(e, 5, &summary));
        self.record(&e)
    }

    /// Flushes to the file (after each step, so TensorBoard sees the run as it goes).
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| input_err!("{}: cannot write: {e}", self.path.display()))
    }
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The event's step.
    pub step: i64,
    /// `train/<key>` or `eval/<key>`.
    pub tag: String,
    /// The value (f32, as TensorBoard stores it).
    pub value: f32,
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// One protobuf field: (number, wire type, varint value, bytes of a fixed-size or length-delimited value).
type Field<'a> = (u64, u64, u64, &'a [u8]);

/// Splits a protobuf message into its fields.
fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, wire, read_varint(b, &mut i)?, &b[0..0])),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                out.push((field, wire, 0, b.get(i..i + n)?));
                i += n;
            }
            2 => {
                let n = read_varint(b, &mut i)? as usize;
                out.push((field, wire, 0, b.get(i..i + n)?));
                i += n;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Every scalar of an event file, in file order; checks both CRCs of every record.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let bad = |why: &str| input_err!("{}: not a TensorBoard event file: {why}", path.display());
    let b = std::fs::read(path).map_err(|e| input_err!("{}: {e}", path.display()))?;
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let head = b.get(i..i + 12).ok_or_else(|| bad("truncated record"))?;
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) as usize;
        if masked_crc(&head[..8]).to_le_bytes() != head[8..12] {
            return Err(bad("bad length CRC"));
        }
        let data = b
            .get(i + 12..i + 12 + len)
            .ok_or_else(|| bad("truncated record"))?;
        let crc = b
            .get(i + 12 + len..i + 16 + len)
            .ok_or_else(|| bad("truncated record"))?;
        if masked_crc(data).to_le_bytes() != crc {
            return Err(bad("bad data CRC"));
        }
        i += 16 + len;
        let ev = fields(data).ok_or_else(|| bad("bad Event proto"))?;
        let step = ev.iter().find(|f| f.0 == 2).map_or(0, |f| f.2 as i64);
        for (_, _, _, summary) in ev.iter().filter(|f| f.0 == 5) {
            for (_, _, _, val) in fields(summary).ok_or_else(|| bad("bad Summary proto"))? {
                let vf = fields(val).ok_or_else(|| bad("bad Value proto"))?;
                let tag = vf.iter().find(|f| f.0 == 1).map(|f| f.3);
                let x = vf.iter().find(|f| f.0 == 2 && f.1 == 5).map(|f| f.3);
                if let (Some(tag), Some(x)) = (tag, x) {
                    out.push(Scalar {
                        step,
                        tag: String::from_utf8_lossy(tag).into_owned(),
                        value: f32::from_le_bytes(x.try_into().expect("4 bytes")),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The event files of a run's `tb/` directory.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| input_err!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::manual_rotate)] // written as TensorFlow's crc32c::Mask, independently of masked_crc
    fn masked_crc_matches_tensorflow() {
        // TensorFlow's crc32c_test: crc32c("123456789") = 0xe3069283 (the Castagnoli check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let c = 0xe306_9283u32;
        assert_eq!(
            masked_crc(b"123456789"),
            ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn varints_by_hand() {
        let mut v = vec![];
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut i = 0;
        assert_eq!(read_varint(&v, &mut i), Some(300));
    }
}
