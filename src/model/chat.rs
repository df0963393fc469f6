//! Chat templates rendered with minijinja, as HF transformers renders them.
//!
//! HF renders with jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` plus
//! `loopcontrols`, the globals `raise_exception` and `strftime_now`, and a `tojson` filter that is Python's
//! `json.dumps(ensure_ascii=False)`. The same is set up here; Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()`, ...) come from minijinja-contrib's pycompat. Not supported: the
//! `{% generation %}` tag (assistant-mask tracking), which only a few templates use.

use crate::{input_err, Result};
use minijinja::{Environment, Error as JErr, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// A compiled chat template with the special tokens it may reference.
pub struct ChatTemplate {
    /// The Jinja source.
    pub source: String,
    /// `bos_token` string passed to the template.
    pub bos_token: String,
    /// `eos_token` string passed to the template.
    pub eos_token: String,
    env: Environment<'static>,
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        // The source compiled once already, so compiling it again cannot fail; fall back to the clone anyway.
        Self::new(&self.source, &self.bos_token, &self.eos_token).unwrap_or_else(|_| Self {
            source: self.source.clone(),
            bos_token: self.bos_token.clone(),
            eos_token: self.eos_token.clone(),
            env: self.env.clone(),
        })
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source_chars", &self.source.len())
            .finish()
    }
}

/// One chat message (`{"role": .., "content": ..}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A ChatML template (Qwen2 style, no default system prompt), used by the tiny built-in models.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is an `Error::Input` naming the template line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| input_err!("chat template does not compile: {}", jerr_line(&e)))?;
        Ok(Self {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            env,
        })
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant header, as HF's `apply_chat_template`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_value(&serde_json::to_value(messages)?, add_generation_prompt)
    }

    /// Renders messages given as JSON (a list of objects, any extra keys kept).
    pub fn render_value(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| input_err!("chat template: {}", jerr_line(&e)))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        tmpl.render(ctx)
            .map_err(|e| input_err!("chat template failed: {}", jerr_line(&e)))
    }
}

/// One-line description of a minijinja error (message plus template line).
fn jerr_line(e: &JErr) -> String {
    let mut s = e.to_string();
    if let Some(l) = e.line() {
        s = format!("{s} (template line {l})");
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// HF's `raise_exception(msg)`: aborts rendering with `msg`.
fn raise_exception(msg: String) -> std::result::Result<Value, JErr> {
    Err(JErr::new(ErrorKind::InvalidOperation, msg))
}

/// HF's `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<Value, JErr> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| JErr::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_dumps(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` layout: `", "` and `": "` separators without indent, newlines with it.
fn py_dumps(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let nl = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_dumps(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push(']');
        }
        J::Object(m) if !m.is_empty() => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                py_dumps(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push('}');
        }
        J::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            // Python prints floats with a fractional part ("1.0"), serde_json prints "1.0" too; keep serde's repr.
            out.push_str(&serde_json::Value::from(f).to_string());
        }
        other => out.push_str(&other.to_string()),
    }
}

/// HF's `strftime_now(fmt)`: the current UTC time formatted with a strftime subset (%Y %m %d %b %B %y %H %M %S %j %A %a %%).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(secs as i64, &fmt)
}

/// Formats Unix time `secs` (UTC) with a strftime subset.
pub fn strftime(secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + if leap && m > 2 { 1 } else { 0 };
    let wd = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('-') => match chars.next() {
                Some('d') => out.push_str(&d.to_string()),
                Some('m') => out.push_str(&m.to_string()),
                Some(o) => {
                    out.push_str("%-");
                    out.push(o)
                }
                None => out.push_str("%-"),
            },
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&wd[..3]),
            Some('A') => out.push_str(wd),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o)
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-07-23 13:45:07 UTC = 1721742307 (a Tuesday, day 205).
        assert_eq!(
            strftime(1721742307, "%d %b %Y %H:%M:%S %A %j"),
            "23 Jul 2024 13:45:07 Tuesday 205"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        // 2000-02-29 (leap day).
        assert_eq!(strftime(951782400, "%d %B %Y %j"), "29 February 2000 060");
    }

    #[test]
    fn chatml_renders_like_hf() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&msgs[1..], false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn raise_exception_and_tojson() {
        let t = ChatTemplate::new("{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}{{ messages[0].content|tojson }} {{ [1, 'a', {'k': [true, none]}]|tojson }}", "", "")
            .unwrap();
        let err = t
            .render(&[Message::new("a", "b"), Message::new("c", "d")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only one message"), "{err}");
        assert_eq!(
            t.render(&[Message::new("u", "é\"")], false).unwrap(),
            r#""é\"" [1, "a", {"k": [true, null]}]"#
        );
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }

    #[test]
    fn pycompat_methods_and_trim() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.content.startswith('x') %}{{ m.content.strip().upper() }}{% endif %}\n{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("u", "xa "), Message::new("u", "b")], false)
                .unwrap(),
            "XA"
        );
    }
}
