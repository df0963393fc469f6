//! Verifiers: answer extraction (`####`, `\boxed{}`, `Answer:` lines, `<answer>` tags) and equivalence
//! (integers, exact rationals, countdown expressions), after `research/data.md` §4.6.
//!
//! Rule choices where the references differ (each conformance test in `tests/reward_verify.rs` names the
//! reference it follows):
//! - `#### N` needs no space after `####` (verl's strict regex requires one; lm-eval's flexible mode does not).
//! - A trailing `.` is dropped (`18.` ≡ 18, as lm-eval gsm8k; math-verify rejects `\boxed{10.}`).
//! - Thousands separators only in valid positions (`1,000` ≡ 1000, `1,2` is not a number), as math-verify.
//! - Integer gold is compared exactly (`2.0` ≡ 2, `2.0000001` ≢ 2); a decimal on either side with a non-integer
//!   or decimal-written gold is compared after rounding both to 6 places (math-verify: 1/3 ≡ 0.333333).
//! - `p%` matches `p` and (with `percent_lenient`) `p/100`, as math-verify.
//! - Leading zeros and `+` are tolerated (`070` ≡ 70, math-verify; the string graders reject them).
//! - `x = 3` ≡ 3: the text after the last `=` is taken (verl math_dapo).
//! - `\fbox{}` is accepted like `\boxed{}` (lm-eval; math-verify does not).
//! - `1\,000` ≡ 1000 (thin spaces removed; math-verify parses it as 1·0).
//! - Non-numeric answers fall back to Hendrycks-style `strip_string` equality (`approximate = true`).

use std::str::FromStr;

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::Zero;
use regex::Regex;

/// A regex compiled once (the patterns are literals that compile; `None` would only disable that rule).
macro_rules! cached_regex {
    ($pat:expr) => {{
        static RE: std::sync::LazyLock<Option<Regex>> =
            std::sync::LazyLock::new(|| Regex::new($pat).ok());
        RE.as_ref()
    }};
}

/// Where an answer was found in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extractor {
    /// The text after the last `####` (to the end of its line; to the end of text for built-in tasks).
    Hash,
    /// The last `\boxed{..}` (brace matched; also `\boxed x` and `\fbox{..}`).
    Boxed,
    /// The last `Answer: ..` line (case-insensitive).
    AnswerLine,
    /// The last `<answer>..</answer>`.
    Tag,
    /// The last number anywhere in the response (`-12`, `1,000`, `3.5`), lm-eval's and TRL's "flexible
    /// extraction": for models that do not follow an answer format.
    LastNumber,
}

/// How a task's responses are checked against the gold answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verifier {
    /// Built-in tasks: the whole text after the last `####` is an integer equal to the gold integer
    /// (leading zeros and `+` tolerated).
    Integer,
    /// Countdown: the text after the last `####` is an expression over exact integers whose literals are the
    /// gold's numbers (as a multiset; all of them if `exactly_once`, else a sub-multiset) and whose value is the
    /// target. The gold is written `3,7,9>30`.
    Countdown {
        /// Every number must be used exactly once (else at most once).
        exactly_once: bool,
    },
    /// Real-data math: extractors in priority order, then numeric equivalence (exact rationals) or a string
    /// fallback.
    Math {
        /// Extractors tried in order; the first that finds an answer decides.
        extractors: Vec<Extractor>,
        /// `p%` also matches `p/100` (and gold `p%` matches a prediction `p/100`).
        percent_lenient: bool,
    },
}

impl Verifier {
    /// The math verifier with every extractor (`####`, boxed, `Answer:`, tag) and lenient percentages.
    pub fn math() -> Verifier {
        Verifier::Math {
            extractors: vec![
                Extractor::Hash,
                Extractor::Boxed,
                Extractor::AnswerLine,
                Extractor::Tag,
            ],
            percent_lenient: true,
        }
    }

    /// Checks `response` against `gold`.
    pub fn check(&self, response: &str, gold: &str) -> Verdict {
        match self {
            Verifier::Integer => {
                let ex = extract_hash_rest(response);
                let correct = match (&ex, normalize_integer(gold)) {
                    (Some(e), Some(g)) => normalize_integer(e).as_deref() == Some(g.as_str()),
                    _ => false,
                };
                Verdict::found(ex, Extractor::Hash, correct, false)
            }
            Verifier::Countdown { exactly_once } => {
                let ex = extract_hash_rest(response);
                let correct = ex
                    .as_deref()
                    .is_some_and(|e| check_countdown(e, gold, *exactly_once));
                Verdict::found(ex, Extractor::Hash, correct, false)
            }
            Verifier::Math {
                extractors,
                percent_lenient,
            } => {
                for x in extractors {
                    if let Some(e) = extract(response, *x) {
                        let (correct, approximate) = math_equal(&e, gold, *percent_lenient);
                        return Verdict {
                            correct,
                            extracted: Some(e),
                            extractor: Some(*x),
                            approximate,
                        };
                    }
                }
                Verdict {
                    correct: false,
                    extracted: None,
                    extractor: None,
                    approximate: false,
                }
            }
        }
    }
}

/// The outcome of a check: correctness and what was extracted by which extractor.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The extracted answer equals the gold.
    pub correct: bool,
    /// The extracted answer text (`None`: nothing found).
    pub extracted: Option<String>,
    /// Which extractor fired.
    pub extractor: Option<Extractor>,
    /// The comparison fell back to string equality (non-numeric answer).
    pub approximate: bool,
}

impl Verdict {
    fn found(ex: Option<String>, x: Extractor, correct: bool, approximate: bool) -> Verdict {
        let extractor = ex.as_ref().map(|_| x);
        Verdict {
            correct,
            extracted: ex,
            extractor,
            approximate,
        }
    }
}

/// The whole text after the last `####`, trimmed (built-in tasks); `None` if there is no `####` or nothing after.
pub fn extract_hash_rest(text: &str) -> Option<String> {
    let i = text.rfind("####")?;
    let rest = text[i + 4..].trim();
    (!rest.is_empty()).then(|| rest.to_string())
}

/// Extracts an answer with one extractor (`None` if it finds nothing).
pub fn extract(text: &str, x: Extractor) -> Option<String> {
    let s = match x {
        Extractor::Hash => {
            let i = text.rfind("####")?;
            text[i + 4..]
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Extractor::Boxed => extract_boxed(text)?,
        Extractor::AnswerLine => {
            let re = cached_regex!(r"(?i)answer\s*:[ \t]*([^\n]+)")?;
            re.captures_iter(text)
                .last()?
                .get(1)?
                .as_str()
                .trim()
                .to_string()
        }
        Extractor::Tag => {
            let re = cached_regex!(r"(?s)<answer>(.*?)</answer>")?;
            re.captures_iter(text)
                .last()?
                .get(1)?
                .as_str()
                .trim()
                .to_string()
        }
        Extractor::LastNumber => extract_last_number(text)?,
    };
    (!s.is_empty()).then_some(s)
}

/// The last number in `text` (lm-eval gsm8k's flexible-extract regex: an optional `-`, digits with optional
/// `,` thousands groups and one decimal part), with its thousands separators removed.
pub fn extract_last_number(text: &str) -> Option<String> {
    let re = cached_regex!(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")?;
    let m = re.find_iter(text).last()?.as_str();
    Some(m.trim_end_matches(',').replace(',', ""))
}

/// The content of the last `\boxed{..}` / `\fbox{..}` (brace matched) or `\boxed x`.
pub fn extract_boxed(text: &str) -> Option<String> {
    let last = [
        text.rfind("\\boxed").map(|i| (i, 6)),
        text.rfind("\\fbox").map(|i| (i, 5)),
    ]
    .into_iter()
    .flatten()
    .max_by_key(|(i, _)| *i)?;
    let after = &text[last.0 + last.1..];
    if let Some(body) = after.strip_prefix('{') {
        let mut depth = 1usize;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].trim().to_string());
                    }
                }
                _ => {}
            }
        }
        None
    } else if after.starts_with(' ') {
        let tok: String = after
            .trim_start()
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '$')
            .collect();
        (!tok.is_empty()).then_some(tok)
    } else {
        None
    }
}

/// A gold/predicted integer without sign noise: `+007` → `7`, `-0` → `0`; `None` if not an integer.
pub fn normalize_integer(s: &str) -> Option<String> {
    let s = s.trim();
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let d = digits.trim_start_matches('0');
    Some(match (d.is_empty(), neg) {
        (true, _) => "0".to_string(),
        (false, true) => format!("-{d}"),
        (false, false) => d.to_string(),
    })
}

/// A number read from an answer: its exact value and how it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberForm {
    /// Exact value (the `%` sign removed: `50%` has value 50).
    pub value: BigRational,
    /// Written with a decimal point.
    pub decimal: bool,
    /// Written with `%` or `\%`.
    pub percent: bool,
}

fn strip_wrappers(s: &str) -> String {
    let mut s = s.trim().to_string();
    if s.contains("\\boxed") || s.contains("\\fbox") {
        if let Some(b) = extract_boxed(&s) {
            s = b;
        }
    }
    for (from, to) in [
        ("\\displaystyle", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("{,}", ","),
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
    ] {
        s = s.replace(from, to);
    }
    s.trim().to_string()
}

/// Removes `\text{..}`-style units: unwraps the whole string if it is one, else deletes them.
fn strip_text_units(s: &str) -> String {
    let Some(re) = cached_regex!(r"\\(?:text|mathrm|mbox|textbf|textrm)\s*\{([^{}]*)\}") else {
        return s.to_string();
    };
    if let Some(c) = re.captures(s) {
        if c.get(0).map(|m| m.as_str().len()) == Some(s.len()) {
            return c[1].trim().to_string();
        }
    }
    re.replace_all(s, "").trim().to_string()
}

/// Parses an answer as a number (see the module docs); `None` if it is not a plain number.
pub fn parse_number(s: &str) -> Option<NumberForm> {
    let mut s = strip_text_units(&strip_wrappers(s));
    let mut percent = false;
    for p in ["\\%", "%"] {
        if let Some(t) = s.strip_suffix(p) {
            s = t.trim().to_string();
            percent = true;
            break;
        }
    }
    if let Some(i) = s.rfind('=') {
        s = s[i + 1..].trim().to_string();
    }
    // Trailing unit words: `18 dollars`, `5 ways`.
    if let Some(re) = cached_regex!(r"^([-+]?[0-9.,/{}\\a-z]*[0-9}])\s+[A-Za-z][A-Za-z ]*\.?$") {
        if let Some(c) = re.captures(&s) {
            s = c[1].to_string();
        }
    }
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let (value, decimal) = parse_signed(&s)?;
    Some(NumberForm {
        value,
        decimal,
        percent,
    })
}

fn parse_signed(s: &str) -> Option<(BigRational, bool)> {
    let mut s = s;
    while let Some(t) = s.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        s = t;
    }
    if let Some(t) = s.strip_prefix('-') {
        let (v, d) = parse_signed(t)?;
        return Some((-v, d));
    }
    if let Some(t) = s.strip_prefix('+') {
        return parse_signed(t);
    }
    if let Some(t) = s.strip_prefix("\\frac") {
        let (a, rest) = frac_arg(t)?;
        let (b, rest) = frac_arg(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let (va, da) = parse_signed(a)?;
        let (vb, db) = parse_signed(b)?;
        if vb.is_zero() {
            return None;
        }
        return Some((va / vb, da || db));
    }
    if let Some((a, b)) = s.split_once('/') {
        let (va, da) = parse_unsigned(a)?;
        let (vb, db) = parse_signed(b)?;
        if vb.is_zero() || da || db {
            return None;
        }
        return Some((va / vb, false));
    }
    let s = s
        .strip_suffix('.')
        .filter(|t| t.ends_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(s);
    parse_unsigned(s)
}

/// One `\frac` argument: `{..}` (brace matched) or a single character.
fn frac_arg(s: &str) -> Option<(&str, &str)> {
    if let Some(body) = s.strip_prefix('{') {
        let mut depth = 1usize;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((&body[..i], &body[i + 1..]));
                    }
                }
                _ => {}
            }
        }
        None
    } else {
        let c = s.chars().next()?;
        Some((&s[..c.len_utf8()], &s[c.len_utf8()..]))
    }
}

/// An unsigned integer or decimal (thousands separators only as `1,234,567.89`).
fn parse_unsigned(s: &str) -> Option<(BigRational, bool)> {
    let s: String = if s.contains(',') {
        let re = cached_regex!(r"^\d{1,3}(,\d{3})+(\.\d+)?$")?;
        if !re.is_match(s) {
            return None;
        }
        s.replace(',', "")
    } else {
        s.to_string()
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s.as_str(), None),
    };
    let ok = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !ok(int) || !frac.is_none_or(ok) || (int.is_empty() && frac.is_none_or(str::is_empty)) {
        return None;
    }
    let f = frac.unwrap_or("");
    let digits = format!("{int}{f}");
    let num = BigInt::from_str(if digits.is_empty() { "0" } else { &digits }).ok()?;
    let den = num_traits::pow(BigInt::from(10), f.len());
    Some((BigRational::new(num, den), frac.is_some()))
}

fn round6(x: &BigRational) -> BigRational {
    let scale = BigRational::from_integer(BigInt::from(1_000_000));
    (x * &scale).round() / scale
}

/// Numeric equality of a prediction against a gold (see the module docs for the rules).
pub fn numbers_equal(gold: &NumberForm, pred: &NumberForm, percent_lenient: bool) -> bool {
    let hundred = BigRational::from_integer(BigInt::from(100));
    let mut golds = vec![gold.value.clone()];
    let mut preds = vec![pred.value.clone()];
    if percent_lenient && gold.percent {
        golds.push(&gold.value / &hundred);
    }
    if percent_lenient && pred.percent {
        preds.push(&pred.value / &hundred);
    }
    let integer_gold = gold.value.is_integer() && !gold.decimal;
    let use_round = (gold.decimal || pred.decimal) && !integer_gold;
    golds.iter().any(|g| {
        preds
            .iter()
            .any(|p| g == p || (use_round && round6(g) == round6(p)))
    })
}

/// Hendrycks-style `strip_string` (simplified) for the non-numeric fallback.
pub fn strip_string(s: &str) -> String {
    let mut s = strip_text_units(&strip_wrappers(s));
    s = s.replace("\\%", "").replace('%', "");
    s.retain(|c| !c.is_whitespace());
    if let Some((lhs, rhs)) = s.split_once('=') {
        if lhs.len() <= 2 {
            s = rhs.to_string();
        }
    }
    // `\frac12` → `\frac{1}{2}`, `\sqrt3` → `\sqrt{3}`.
    if let Some(re) = cached_regex!(r"\\frac([0-9a-z])([0-9a-z])") {
        s = re.replace_all(&s, "\\frac{$1}{$2}").to_string();
    }
    if let Some(re) = cached_regex!(r"\\sqrt([0-9a-z])") {
        s = re.replace_all(&s, "\\sqrt{$1}").to_string();
    }
    s.trim_end_matches('.').to_string()
}

/// Math equivalence of an extracted answer and a gold: (correct, approximate).
pub fn math_equal(pred: &str, gold: &str, percent_lenient: bool) -> (bool, bool) {
    match (parse_number(gold), parse_number(pred)) {
        (Some(g), Some(p)) => (numbers_equal(&g, &p, percent_lenient), false),
        (Some(_), None) => (false, false),
        _ => (strip_string(gold) == strip_string(pred), true),
    }
}

/// Parses a countdown gold `3,7,9>30` into (numbers, target).
pub fn parse_countdown_gold(gold: &str) -> Option<(Vec<i64>, i64)> {
    let (nums, target) = gold.trim().split_once('>')?;
    let nums = nums
        .split(',')
        .map(|n| n.trim().parse::<i64>().ok())
        .collect::<Option<Vec<_>>>()?;
    Some((nums, target.trim().parse().ok()?))
}

/// Evaluates a countdown expression (`+ - * /`, parentheses, non-negative integer literals) over exact
/// integers: `None` on a syntax error, overflow, division by zero or non-exact division. Returns the value and
/// the literals in order.
pub fn eval_countdown(expr: &str) -> Option<(i64, Vec<i64>)> {
    struct P<'a> {
        b: &'a [u8],
        i: usize,
        lits: Vec<i64>,
    }
    impl P<'_> {
        fn expr(&mut self) -> Option<i64> {
            let mut v = self.term()?;
            while let Some(&c) = self.b.get(self.i) {
                match c {
                    b'+' => {
                        self.i += 1;
                        v = v.checked_add(self.term()?)?;
                    }
                    b'-' => {
                        self.i += 1;
                        v = v.checked_sub(self.term()?)?;
                    }
                    _ => break,
                }
            }
            Some(v)
        }
        fn term(&mut self) -> Option<i64> {
            let mut v = self.atom()?;
            while let Some(&c) = self.b.get(self.i) {
                match c {
                    b'*' => {
                        self.i += 1;
                        v = v.checked_mul(self.atom()?)?;
                    }
                    b'/' => {
                        self.i += 1;
                        let d = self.atom()?;
                        if d == 0 || v.checked_rem(d)? != 0 {
                            return None;
                        }
                        v /= d;
                    }
                    _ => break,
                }
            }
            Some(v)
        }
        fn atom(&mut self) -> Option<i64> {
            match self.b.get(self.i)? {
                b'(' => {
                    self.i += 1;
                    let v = self.expr()?;
                    if self.b.get(self.i) != Some(&b')') {
                        return None;
                    }
                    self.i += 1;
                    Some(v)
                }
                c if c.is_ascii_digit() => {
                    let start = self.i;
                    while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                        self.i += 1;
                    }
                    let v: i64 = std::str::from_utf8(&self.b[start..self.i])
                        .ok()?
                        .parse()
                        .ok()?;
                    self.lits.push(v);
                    Some(v)
                }
                _ => None,
            }
        }
    }
    let compact: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() || compact.len() > 200 {
        return None;
    }
    let mut p = P {
        b: compact.as_bytes(),
        i: 0,
        lits: Vec::new(),
    };
    let v = p.expr()?;
    (p.i == p.b.len()).then_some((v, p.lits))
}

/// Whether `expr` solves the countdown `gold` (`3,7,9>30`) under the multiset rule.
pub fn check_countdown(expr: &str, gold: &str, exactly_once: bool) -> bool {
    let (Some((mut nums, target)), Some((v, mut lits))) =
        (parse_countdown_gold(gold), eval_countdown(expr))
    else {
        return false;
    };
    if v != target {
        return false;
    }
    nums.sort_unstable();
    lits.sort_unstable();
    if exactly_once {
        return nums == lits;
    }
    // Sub-multiset: every literal consumes one equal number.
    for l in lits {
        match nums.iter().position(|n| *n == l) {
            Some(i) => {
                nums.remove(i);
            }
            None => return false,
        }
    }
    true
}
