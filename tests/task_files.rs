//! Dataset readers: JSONL (plain, chat, GSM8K) and verl-schema Parquet fixtures written by
//! scripts/make_data_fixtures.py (pyarrow, snappy), plus malformed rows.

use luspo::reward::{score, RewardConfig};
use luspo::task::{build, Prompt, Split, TaskConfig};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");

fn file_cfg(name: &str, file: &str) -> TaskConfig {
    TaskConfig {
        name: name.into(),
        path: format!("{DIR}/{file}"),
        eval_fraction: 0.0,
        ..TaskConfig::default()
    }
}

#[test]
fn gsm8k_jsonl() {
    let mut c = file_cfg("jsonl", "gsm8k_mini.jsonl");
    c.prompt_suffix =
        " Let's think step by step and output the final answer after \"####\".".into();
    let t = build(&c).unwrap();
    let all = t.problems(Split::Eval, 10, 0).unwrap();
    assert!(
        all.is_empty(),
        "eval_fraction 0 and no eval_path: no eval rows"
    );
    let mut train = t.problems(Split::Train, 10, 0).unwrap();
    train.sort_by(|a, b| a.id.cmp(&b.id));
    let answers: Vec<&str> = train.iter().map(|p| p.answer.as_str()).collect();
    assert_eq!(answers, vec!["12", "6000", "3"]);
    assert!(
        train[0].id.ends_with("gsm8k_mini.jsonl:1"),
        "{}",
        train[0].id
    );
    let Prompt::Text(q) = &train[1].prompt else {
        panic!("text prompt")
    };
    assert!(
        q.starts_with("A farm sells 1,200 eggs") && q.ends_with("after \"####\"."),
        "{q}"
    );
    let v = t.verifier();
    let r = score(
        &RewardConfig::default(),
        &v,
        "5 days of 1200 is 6000.\n#### 6,000",
        &train[1].answer,
        20,
        false,
    );
    assert_eq!(r.accuracy, 1.0);
}

#[test]
fn chat_jsonl_with_eval_file() {
    let mut c = file_cfg("jsonl", "chat_mini.jsonl");
    c.eval_path = format!("{DIR}/gsm8k_mini.jsonl");
    c.system_prompt = "You are a calculator.".into();
    let t = build(&c).unwrap();
    let eval = t.problems(Split::Eval, 2, 0).unwrap();
    assert_eq!(eval.len(), 2);
    assert_eq!(eval[0].answer, "12");
    let train = t.problems(Split::Train, 100, 0).unwrap();
    assert_eq!(train.len(), 3);
    let by_id = |id: &str| {
        train
            .iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("id {id}"))
    };
    assert_eq!(by_id("7").answer, "42", "numeric answer and numeric id");
    let a2 = by_id("a2");
    assert_eq!(a2.answer, "\\frac{9}{2}");
    let Prompt::Messages(m) = &a2.prompt else {
        panic!("chat prompt")
    };
    assert_eq!(
        (m.len(), m[0].role.as_str(), m[0].content.as_str()),
        (2, "system", "You are a calculator.")
    );
    assert_eq!(m[1].content, "What is half of 9?");
    let Prompt::Messages(m) = &by_id("a1").prompt else {
        panic!("system prompt turns text into messages")
    };
    assert_eq!(
        (m[1].role.as_str(), m[1].content.as_str()),
        ("user", "What is 2 + 3?")
    );
    assert!(t.verifier().check("\\boxed{4.5}", &a2.answer).correct);
    let mut r = <luspo::task::TaskRng as rand::SeedableRng>::seed_from_u64(0);
    assert!(t.sample_train(&mut r).is_ok());
    assert!(
        t.demo(a2, "direct", &mut r).is_err(),
        "files have no worked solutions"
    );
}

#[test]
fn verl_parquet() {
    let t = build(&file_cfg("parquet", "verl_mini.parquet")).unwrap();
    let mut train = t.problems(Split::Train, 100, 3).unwrap();
    assert_eq!(train.len(), 5);
    train.sort_by_key(|p| p.id.parse::<i64>().unwrap());
    let ids: Vec<&str> = train.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec!["100", "101", "102", "103", "104"]);
    let answers: Vec<&str> = train.iter().map(|p| p.answer.as_str()).collect();
    assert_eq!(answers, vec!["42", "144", "999", "9", "25"]);
    let Prompt::Messages(m) = &train[0].prompt else {
        panic!("chat prompt")
    };
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].role, "user");
    assert!(m[0].content.contains("What is 17 + 25?") && m[0].content.contains("Answer:"));
    let r = score(
        &RewardConfig::default(),
        &t.verifier(),
        "17+25=42\nAnswer: 42",
        &train[0].answer,
        9,
        false,
    );
    assert_eq!(r.accuracy, 1.0);
    // Train order depends on the seed, contents do not.
    let a = t.problems(Split::Train, 5, 1).unwrap();
    assert_eq!(a, t.problems(Split::Train, 5, 1).unwrap());
}

#[test]
fn eval_fraction_splits_rows_disjointly() {
    let mut c = file_cfg("parquet", "verl_mini.parquet");
    c.eval_fraction = 0.5;
    let t = build(&c).unwrap();
    let train = t.problems(Split::Train, 100, 0).unwrap();
    let eval = t.problems(Split::Eval, 100, 0).unwrap();
    assert_eq!(train.len() + eval.len(), 5);
    assert!(
        !train.is_empty() && !eval.is_empty(),
        "{} train / {} eval",
        train.len(),
        eval.len()
    );
    assert!(train.iter().all(|p| eval.iter().all(|q| q.id != p.id)));
    for p in &eval {
        assert_eq!(luspo::task::split_of(&p.id, 0.5), Split::Eval);
    }
}

#[test]
fn malformed_rows_name_file_line_and_key() {
    let cases = [
        (
            "jsonl",
            "bad_missing_answer.jsonl",
            vec!["bad_missing_answer.jsonl:2", "`answer`"],
        ),
        (
            "jsonl",
            "bad_message.jsonl",
            vec!["bad_message.jsonl:3", "`messages[0]`"],
        ),
        (
            "parquet",
            "bad_verl.parquet",
            vec!["bad_verl.parquet: row 2", "ground_truth"],
        ),
        (
            "jsonl",
            "missing.jsonl",
            vec!["missing.jsonl", "cannot open"],
        ),
        (
            "parquet",
            "chat_mini.jsonl",
            vec!["chat_mini.jsonl", "parquet"],
        ),
    ];
    for (name, file, needles) in cases {
        let err = build(&file_cfg(name, file))
            .err()
            .unwrap_or_else(|| panic!("{file} should fail"));
        assert!(matches!(err, luspo::Error::Input(_)), "{err:?}");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        for n in needles {
            assert!(msg.contains(n), "{file}: `{n}` not in `{msg}`");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.jsonl");
    std::fs::write(&p, "{\"prompt\": \"a\", \"answer\": \"1\"}\n{not json\n").unwrap();
    let c = TaskConfig {
        name: "jsonl".into(),
        path: p.to_string_lossy().into(),
        ..TaskConfig::default()
    };
    let msg = build(&c).err().unwrap().to_string();
    assert!(
        msg.contains("x.jsonl:2") && msg.contains("invalid JSON"),
        "{msg}"
    );
    std::fs::write(&p, "{\"prompt\": 5, \"answer\": \"1\"}\n").unwrap();
    let msg = build(&c).err().unwrap().to_string();
    assert!(
        msg.contains("x.jsonl:1") && msg.contains("`prompt`"),
        "{msg}"
    );
}
