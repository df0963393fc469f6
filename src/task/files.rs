//! Datasets from files: JSONL and Parquet (verl's RL schema), mapped onto [`Problem`]s. `task.name` picks the
//! format (`jsonl` or `parquet`) for both `path` and `eval_path`, whatever the file extensions.
//!
//! Accepted rows (keys configurable with `prompt_key`, `answer_key`, `id_key`; dotted paths reach nested
//! fields):
//! - JSONL: `{"prompt": "..."}` or `{"messages": [{"role","content"}..]}` or GSM8K `{"question": ..}`; the answer
//!   under `answer` (string or number; GSM8K's `... #### 72` gives gold `72`, commas removed) or
//!   `reward_model.ground_truth`; optional `id`.
//! - Parquet (verl): `prompt` = list of `{role, content}`, `reward_model.ground_truth`, optional
//!   `extra_info.index`, `data_source`; read with the `parquet` crate's row API.
//!
//! A malformed row gives `Error::Input` naming the file, the line (JSONL, 1-based) or row (Parquet, 0-based)
//! and the key.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::{split_of, Message, Problem, Prompt, Split, Task, TaskConfig, TaskRng};
use crate::reward::Verifier;
use crate::{input_err, Result};

/// A dataset read from files, split into train and eval.
pub struct FileTask {
    name: String,
    train: Vec<Problem>,
    eval: Vec<Problem>,
    verifier: Verifier,
}

/// Reads every row of a JSON-lines (`parquet = false`) or Parquet file as JSON values, with a location label
/// per row (`file:line`, 1-based, or `file: row i`, 0-based).
pub fn read_rows(path: &str, parquet: bool) -> Result<Vec<(String, Value)>> {
    let p = Path::new(path);
    let file = std::fs::File::open(p).map_err(|e| input_err!("{path}: cannot open: {e}"))?;
    if parquet {
        let reader = SerializedFileReader::new(file)
            .map_err(|e| input_err!("{path}: not a readable parquet file: {e}"))?;
        let iter = reader
            .get_row_iter(None)
            .map_err(|e| input_err!("{path}: cannot read rows: {e}"))?;
        let mut out = Vec::new();
        for (i, row) in iter.enumerate() {
            let row = row.map_err(|e| input_err!("{path}: row {i}: cannot decode: {e}"))?;
            let obj = row
                .get_column_iter()
                .map(|(k, f)| (k.clone(), field_to_json(f)))
                .collect();
            out.push((format!("{path}: row {i}"), Value::Object(obj)));
        }
        Ok(out)
    } else {
        let text =
            std::io::read_to_string(file).map_err(|e| input_err!("{path}: cannot read: {e}"))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| input_err!("{path}:{}: invalid JSON: {e}", i + 1))?;
            out.push((format!("{path}:{}", i + 1), v));
        }
        Ok(out)
    }
}

/// Converts a parquet field to JSON (strings, numbers, lists, structs, maps; other types as their display text).
fn field_to_json(f: &Field) -> Value {
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float(v) => Value::from(*v as f64),
        Field::Double(v) => Value::from(*v),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(format!("{f}")),
        },
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_to_json(v)))
                .collect(),
        ),
        Field::ListInternal(l) => Value::Array(l.elements().iter().map(field_to_json).collect()),
        Field::MapInternal(m) => Value::Object(
            m.entries()
                .iter()
                .map(|(k, v)| match k {
                    Field::Str(s) => (s.clone(), field_to_json(v)),
                    other => (format!("{other}"), field_to_json(v)),
                })
                .collect(),
        ),
        other => Value::String(format!("{other}")),
    }
}

/// The value at a dotted key path (`reward_model.ground_truth`).
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.')
        .try_fold(v, |cur, k| cur.get(k))
        .filter(|v| !v.is_null())
}

/// The first key of `explicit` (if non-empty) or `auto` present in the row.
fn find<'a>(v: &'a Value, explicit: &str, auto: &[&'static str]) -> Option<(String, &'a Value)> {
    if !explicit.is_empty() {
        return get(v, explicit).map(|x| (explicit.to_string(), x));
    }
    auto.iter()
        .find_map(|k| get(v, k).map(|x| (k.to_string(), x)))
}

/// Maps one row onto a problem (`loc` names the file and line/row in errors).
pub fn row_to_problem(cfg: &TaskConfig, loc: &str, v: &Value) -> Result<Problem> {
    if !v.is_object() {
        return Err(input_err!("{loc}: a row must be a JSON object"));
    }
    let pk = if cfg.prompt_key.is_empty() {
        "prompt"
    } else {
        cfg.prompt_key.as_str()
    };
    let (pkey, pv) = find(
        v,
        &cfg.prompt_key,
        &["prompt", "messages", "question", "problem"],
    )
    .ok_or_else(|| input_err!("{loc}: missing key `{pk}` (or `messages`/`question`/`problem`)"))?;
    let mut prompt = match pv {
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(items) => {
            let mut msgs = Vec::with_capacity(items.len());
            for (j, m) in items.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) => msgs.push(Message { role: r.to_string(), content: c.to_string() }),
                    _ => {
                        return Err(input_err!(
                            "{loc}: key `{pkey}[{j}]` must be an object with string `role` and `content`"
                        ))
                    }
                }
            }
            if msgs.is_empty() {
                return Err(input_err!("{loc}: key `{pkey}` is an empty message list"));
            }
            Prompt::Messages(msgs)
        }
        _ => {
            return Err(input_err!(
                "{loc}: key `{pkey}` must be a string or a list of messages"
            ))
        }
    };
    let ak = if cfg.answer_key.is_empty() {
        "answer"
    } else {
        cfg.answer_key.as_str()
    };
    let (akey, av) = find(
        v,
        &cfg.answer_key,
        &["answer", "reward_model.ground_truth", "ground_truth"],
    )
    .ok_or_else(|| input_err!("{loc}: missing key `{ak}` (or `reward_model.ground_truth`)"))?;
    let mut answer = match av {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(input_err!(
                "{loc}: key `{akey}` must be a string or a number"
            ))
        }
    };
    if let Some(i) = answer.rfind("####") {
        // GSM8K: the gold is the text after the last `####`, thousands commas removed.
        answer = answer[i + 4..].trim().replace(',', "");
    }
    if answer.is_empty() {
        return Err(input_err!("{loc}: key `{akey}` is empty"));
    }
    let id = match find(
        v,
        &cfg.id_key,
        &["id", "extra_info.index", "index", "unique_id"],
    ) {
        Some((_, Value::String(s))) => s.clone(),
        Some((_, Value::Number(n))) => n.to_string(),
        Some((k, _)) => return Err(input_err!("{loc}: key `{k}` must be a string or a number")),
        None => loc.to_string(),
    };
    if !cfg.prompt_suffix.is_empty() {
        match &mut prompt {
            Prompt::Text(t) => t.push_str(&cfg.prompt_suffix),
            Prompt::Messages(m) => {
                if let Some(u) = m.iter_mut().rev().find(|m| m.role == "user") {
                    u.content.push_str(&cfg.prompt_suffix);
                }
            }
        }
    }
    if !cfg.system_prompt.is_empty() {
        let sys = Message {
            role: "system".into(),
            content: cfg.system_prompt.clone(),
        };
        prompt = match prompt {
            Prompt::Text(t) => Prompt::Messages(vec![
                sys,
                Message {
                    role: "user".into(),
                    content: t,
                },
            ]),
            Prompt::Messages(mut m) => {
                if m.first().is_some_and(|m| m.role == "system") {
                    m[0] = sys;
                } else {
                    m.insert(0, sys);
                }
                Prompt::Messages(m)
            }
        };
    }
    Ok(Problem { id, prompt, answer })
}

fn load_file(cfg: &TaskConfig, path: &str) -> Result<Vec<Problem>> {
    read_rows(path, cfg.name == "parquet")?
        .iter()
        .map(|(loc, v)| row_to_problem(cfg, loc, v))
        .collect()
}

impl FileTask {
    /// Reads `cfg.path` (and `cfg.eval_path`) and splits them.
    pub fn load(cfg: &TaskConfig) -> Result<Self> {
        if cfg.path.is_empty() {
            return Err(input_err!(
                "task.path must name a .jsonl or .parquet file for task.name = `{}`",
                cfg.name
            ));
        }
        let rows = load_file(cfg, &cfg.path)?;
        let (train, eval) = if cfg.eval_path.is_empty() {
            rows.into_iter()
                .partition(|p| split_of(&p.id, cfg.eval_fraction) == Split::Train)
        } else {
            (rows, load_file(cfg, &cfg.eval_path)?)
        };
        if train.is_empty() {
            return Err(input_err!(
                "{}: no training rows (empty file, or all held out by eval_fraction)",
                cfg.path
            ));
        }
        Ok(FileTask {
            name: cfg.name.clone(),
            train,
            eval,
            verifier: Verifier::Math {
                extractors: cfg.extractors.clone(),
                percent_lenient: cfg.percent_lenient,
            },
        })
    }

    /// All problems of a split, in file order.
    pub fn all(&self, split: Split) -> &[Problem] {
        match split {
            Split::Train => &self.train,
            Split::Eval => &self.eval,
        }
    }
}

impl Task for FileTask {
    fn name(&self) -> &str {
        &self.name
    }
    fn problems(&self, split: Split, n: usize, seed: u64) -> Result<Vec<Problem>> {
        match split {
            Split::Eval => Ok(self.eval.iter().take(n).cloned().collect()),
            Split::Train => {
                let mut idx: Vec<usize> = (0..self.train.len()).collect();
                idx.shuffle(&mut TaskRng::seed_from_u64(seed));
                Ok(idx
                    .into_iter()
                    .take(n)
                    .map(|i| self.train[i].clone())
                    .collect())
            }
        }
    }
    fn sample_train(&self, rng: &mut TaskRng) -> Result<Problem> {
        Ok(self.train[rng.random_range(0..self.train.len())].clone())
    }
    fn style_mix(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    fn demo(&self, problem: &Problem, _style: &str, _rng: &mut TaskRng) -> Result<String> {
        Err(input_err!(
            "task `{}` (problem `{}`) has no worked solutions for SFT",
            self.name,
            problem.id
        ))
    }
    fn style_of(&self, _problem: &Problem, _response: &str) -> Option<String> {
        None
    }
    fn verifier(&self) -> Verifier {
        self.verifier.clone()
    }
    fn alphabet(&self) -> Option<String> {
        None
    }
    fn max_response_len_hint(&self) -> usize {
        1024
    }
}
