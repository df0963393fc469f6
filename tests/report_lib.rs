//! Report library: length analysis and over-seed statistics checked against hand-computed values on the
//! fixtures in tests/fixtures/runs (made by make_fixtures.py there), plot files, malformed input.

use luspo::report::analysis::{mean, percentile, std_pop, std_sample};
use luspo::report::{self, Comparison, Stat};
use luspo::Error;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/runs")
        .join(name)
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

fn close_opt(a: Option<f64>, b: f64) {
    close(a.unwrap_or(f64::NAN), b);
}

fn stat(s: &Option<Stat>, mean: f64, std: f64, min: f64, max: f64, n: usize) {
    let s = s.expect("stat present");
    close(s.mean, mean);
    close(s.std, std);
    close(s.min, min);
    close(s.max, max);
    assert_eq!(s.n, n);
}

fn all_runs() -> Vec<PathBuf> {
    // Deliberately out of order: the comparison groups by objective (first seen) and sorts by seed.
    vec![fixture("grpo-s1"), fixture("luspo-s3"), fixture("grpo-s0")]
}

fn comparison() -> Comparison {
    report::compare(&report::load_runs(&all_runs()).expect("fixtures load"))
}

/// Copies a fixture run into a fresh temp folder; returns (guard, run dir).
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dst = tmp.path().join(name);
    std::fs::create_dir_all(&dst).expect("mkdir");
    for e in std::fs::read_dir(fixture(name)).expect("fixture dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
    }
    (tmp, dst)
}

fn input_msg(r: luspo::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Input(m)) => {
            assert!(!m.contains('\n'), "one line: {m}");
            m
        }
        other => panic!("expected Error::Input, got {other:?}"),
    }
}

#[test]
fn stats_helpers_match_numpy() {
    // numpy: np.percentile([1,2,3,4], [10,50,90]) = [1.3, 2.5, 3.7]; np.std(ddof=0/1).
    let v = [4.0, 1.0, 3.0, 2.0];
    close_opt(percentile(&v, 0.1), 1.3);
    close_opt(percentile(&v, 0.5), 2.5);
    close_opt(percentile(&v, 0.9), 3.7);
    close_opt(mean(&v), 2.5);
    close_opt(std_pop(&v), 1.25f64.sqrt());
    close_opt(std_sample(&v), (5.0f64 / 3.0).sqrt());
    close_opt(std_sample(&[7.0]), 0.0);
    assert_eq!(percentile(&[], 0.5), None);
    assert_eq!(Stat::of(&[None, None]), None);
    stat(
        &Stat::of(&[Some(1.0), None, Some(3.0)]),
        2.0,
        2.0f64.sqrt(),
        1.0,
        3.0,
        2,
    );
}

#[test]
fn runs_are_grouped_and_before_after_read() {
    let c = comparison();
    let ids: Vec<(&str, u64)> = c
        .runs
        .iter()
        .map(|r| (r.objective.as_str(), r.seed))
        .collect();
    assert_eq!(ids, [("grpo", 0), ("grpo", 1), ("luspo", 3)]);
    let g0 = &c.runs[0];
    assert!(g0.run_dir.ends_with("grpo-s0"));
    assert_eq!(g0.steps, 4);
    close_opt(g0.eval_accuracy_before, 0.2);
    close_opt(g0.eval_accuracy_after, 0.5);
    close_opt(g0.eval_response_length_after, 120.0);
    assert_eq!(g0.curves.step, [1, 2, 3, 4]);
    assert_eq!(g0.curves.response_length_mean, [100.0, 110.0, 120.0, 130.0]);
    close(g0.curves.clip_frac_high[2], 0.06);
    assert_eq!(g0.eval_curves.step, [0, 2, 4]);
    // luspo-s3 has no summary.json: objective and seed from config.toml, before/after from eval.jsonl.
    let l = &c.runs[2];
    assert_eq!(l.steps, 4);
    close_opt(l.eval_accuracy_before, 0.2);
    close_opt(l.eval_accuracy_after, 0.6);
    close_opt(l.eval_response_length_before, 100.0);
    close_opt(l.eval_response_length_after, 90.0);
}

#[test]
fn by_objective_statistics_over_seeds() {
    let c = comparison();
    assert_eq!(c.by_objective.len(), 2);
    let g = &c.by_objective[0];
    assert_eq!(
        (g.objective.as_str(), g.n_seeds, g.seeds.clone()),
        ("grpo", 2, vec![0, 1])
    );
    stat(&g.eval_accuracy_before, 0.2, 0.0, 0.2, 0.2, 2);
    // after: 0.5 and 0.7 → mean 0.6, sample std sqrt(2 · 0.1² / 1).
    stat(&g.eval_accuracy_after, 0.6, 0.02f64.sqrt(), 0.5, 0.7, 2);
    stat(
        &g.eval_response_length_after,
        140.0,
        800.0f64.sqrt(),
        120.0,
        160.0,
        2,
    );
    stat(
        &g.final_response_length_mean,
        145.0,
        450.0f64.sqrt(),
        130.0,
        160.0,
        2,
    );
    // Correct lengths: s0 (10+20+12+20+20)/5 = 16.4, s1 (50+60)/2 = 55.
    stat(
        &g.correct_mean_length,
        35.7,
        38.6 / 2.0f64.sqrt(),
        16.4,
        55.0,
        2,
    );
    // A>0 lengths: s0 (10+20+12)/3 = 14, s1 55; A<0: s0 106/3, s1 15.
    stat(
        &g.positive_advantage_mean_length,
        34.5,
        41.0 / 2.0f64.sqrt(),
        14.0,
        55.0,
        2,
    );
    let neg_s0 = 106.0 / 3.0;
    stat(
        &g.negative_advantage_mean_length,
        (neg_s0 + 15.0) / 2.0,
        (neg_s0 - 15.0) / 2.0f64.sqrt(),
        15.0,
        neg_s0,
        2,
    );
    stat(
        &g.truncated_frac,
        0.0625,
        0.125 / 2.0f64.sqrt(),
        0.0,
        0.125,
        2,
    );
    let l = &c.by_objective[1];
    assert_eq!(
        (l.objective.as_str(), l.n_seeds, l.seeds.clone()),
        ("luspo", 1, vec![3])
    );
    stat(&l.eval_accuracy_after, 0.6, 0.0, 0.6, 0.6, 1);
    stat(&l.eval_response_length_after, 90.0, 0.0, 90.0, 90.0, 1);
}

#[test]
fn length_analysis_matches_hand_computation() {
    let c = comparison();
    let a = &c.runs[0].length_analysis; // grpo-s0
    assert_eq!((a.n_responses, a.n_steps), (8, 2));
    assert_eq!((a.correct.n, a.incorrect.n), (5, 3));
    close_opt(a.correct.mean_length, 16.4);
    close_opt(a.incorrect.mean_length, 106.0 / 3.0);
    assert_eq!(
        (
            a.positive_advantage.n,
            a.negative_advantage.n,
            a.zero_advantage.n
        ),
        (3, 3, 2)
    );
    close_opt(a.positive_advantage.mean_length, 14.0);
    close_opt(a.negative_advantage.mean_length, 106.0 / 3.0);
    close_opt(a.zero_advantage.mean_length, 20.0);
    // Per-step A>0 means 15 → 12, A<0 means 35 → 36.
    close_opt(a.mean_step_change_positive, -3.0);
    close_opt(a.mean_step_change_negative, 1.0);
    // Groups with both signs: (1,p1) 10−30, (1,p2) 20−40, (2,p1) 12−36.
    close_opt(a.advantage_length_gap, -64.0 / 3.0);
    assert_eq!(a.truncated.n, 1);
    close_opt(a.truncated.mean_length, 40.0);
    close_opt(a.truncated_frac, 0.125);
    // Group means 20, 30, 24, 20; group stds 10, 10, 12, 0.
    let p = &a.per_prompt;
    assert_eq!(p.n_groups, 4);
    close_opt(p.mean, 23.5);
    close_opt(p.std, 16.75f64.sqrt());
    close_opt(p.p10, 20.0);
    close_opt(p.p50, 22.0);
    close_opt(p.p90, 28.2);
    close_opt(p.mean_within_prompt_std, 8.0);
    close_opt(a.per_prompt_first_step.mean, 25.0);
    close_opt(a.per_prompt_first_step.std, 5.0);
    close_opt(a.per_prompt_first_step.p90, 29.0);
    close_opt(a.per_prompt_last_step.p50, 22.0);

    let s1 = &a.by_step[0];
    assert_eq!((s1.step, s1.n), (1, 4));
    close_opt(s1.mean_length, 25.0);
    close_opt(s1.accuracy, 0.5);
    close_opt(s1.correct_mean_length, 15.0);
    close_opt(s1.incorrect_mean_length, 35.0);
    close_opt(s1.positive_advantage_mean_length, 15.0);
    close_opt(s1.negative_advantage_mean_length, 35.0);
    assert_eq!(
        (s1.positive_advantage_change, s1.negative_advantage_change),
        (None, None)
    );
    close_opt(s1.advantage_length_gap, -20.0);
    close_opt(s1.truncated_frac, 0.25);
    close_opt(s1.mean_within_prompt_std, 10.0);
    let s2 = &a.by_step[1];
    assert_eq!((s2.step, s2.n), (2, 4));
    close_opt(s2.mean_length, 22.0);
    close_opt(s2.accuracy, 0.75);
    close_opt(s2.correct_mean_length, 52.0 / 3.0);
    close_opt(s2.incorrect_mean_length, 36.0);
    close_opt(s2.positive_advantage_change, -3.0);
    close_opt(s2.negative_advantage_change, 1.0);
    close_opt(s2.advantage_length_gap, -24.0);
    close_opt(s2.truncated_frac, 0.0);
    close_opt(s2.mean_within_prompt_std, 6.0);

    // luspo-s3: step 1 has only A=0 responses, so there is no step-to-step change of the A>0 mean.
    let l = &c.runs[2].length_analysis;
    assert_eq!(l.by_step[0].positive_advantage_mean_length, None);
    close_opt(l.by_step[1].positive_advantage_mean_length, 9.0);
    assert_eq!(l.by_step[1].positive_advantage_change, None);
    assert_eq!(l.mean_step_change_positive, None);
    close_opt(l.correct.mean_length, 29.0 / 3.0);
    close_opt(l.zero_advantage.mean_length, 10.0);
}

fn same_json(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                "{at}: {x} != {y}"
            );
        }
        (V::Array(x), V::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same_json(p, q, &format!("{at}[{i}]"));
            }
        }
        (V::Object(x), V::Object(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (k, p) in x {
                same_json(p, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn writes_json_report_and_plots() {
    let out = tempfile::tempdir().expect("tempdir");
    let runs = report::load_runs(&all_runs()).expect("load");
    let c = report::write_comparison(&runs, out.path()).expect("write");
    let files = report::output_files(out.path());
    assert_eq!(files.len(), 3 + 2 * report::plot_names().len());
    assert_eq!(c.plots.len(), report::plot_names().len());
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!bytes.is_empty(), "{} is empty", f.display());
        match f.extension().and_then(|e| e.to_str()) {
            Some("png") => {
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
                assert_eq!(&bytes[12..16], b"IHDR");
                let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
                let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
                assert_eq!((w, h), (960, 600));
                assert!(bytes.len() > 10_000, "{} looks blank", f.display());
            }
            Some("svg") => {
                let text = String::from_utf8(bytes).expect("svg is utf-8");
                assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
                assert!(
                    text.contains("RL step") && text.contains("grpo") && text.contains("luspo")
                );
            }
            _ => {}
        }
    }
    // No temporary files left behind.
    for dir in [out.path().to_path_buf(), out.path().join("plots")] {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let name = e.expect("entry").file_name().to_string_lossy().to_string();
            assert!(!name.starts_with('.'), "leftover {name}");
        }
    }
    let json = std::fs::read_to_string(out.path().join("compare.json")).expect("compare.json");
    let _: Comparison = serde_json::from_str(&json).expect("compare.json parses as Comparison");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    // serde_json's float parsing may differ in the last ulp, so compare with a tolerance.
    same_json(&v, &serde_json::to_value(&c).expect("to_value"), "$");
    assert_eq!(v["runs"][0]["curves"]["response_length_mean"][3], 130.0);
    assert_eq!(v["by_objective"][0]["eval_accuracy_after"]["max"], 0.7);
    assert!(v["runs"][2]["length_analysis"]["mean_step_change_positive"].is_null());
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.contains("![response length](plots/response_length.png)"));
    assert!(md.contains(
        "| grpo | 2 | 20.0% ± 0.0 | 60.0% ± 14.1 | +40.0 pt | 100.0 ± 0.0 | 140.0 ± 28.3 | +40.0 |"
    ));
    assert!(md.contains("| luspo | 1 | 20.0% | 60.0% | +40.0 pt | 100.0 | 90.0 | -10.0 |"));
    assert!(md.contains("| grpo | 0 | 4 | 23.5 | 4.1 | 20.0 | 22.0 | 28.2 | 8.0 | 25.0 → 22.0 |"));
    let html = std::fs::read_to_string(out.path().join("report.html")).expect("report.html");
    assert!(html.contains("<img src=\"plots/response_length.png\""));
    assert!(html.contains("<tr><td>luspo</td><td>1</td><td>20.0%</td><td>60.0%</td>"));
    assert_eq!(
        html.matches("<table>").count(),
        md.lines().filter(|l| l.starts_with("|---")).count()
    );
    assert!(!html.contains("| grpo"));
}

#[test]
fn malformed_lines_name_file_and_line() {
    let (_g, dir) = copy_fixture("grpo-s0");
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let half = lines[2].len() / 2;
    lines[2].truncate(half);
    std::fs::write(&path, lines.join("\n")).expect("write");
    let m = input_msg(report::load_run(&dir));
    assert!(m.contains("metrics.jsonl: line 3:"), "{m}");

    let (_g, dir) = copy_fixture("grpo-s0");
    let path = dir.join("rollouts.jsonl");
    let text = std::fs::read_to_string(&path).expect("read");
    let bad = text.replacen("\"advantage\": -1.0, ", "", 1);
    assert_ne!(bad, text);
    std::fs::write(&path, bad).expect("write");
    let m = input_msg(report::load_run(&dir));
    assert!(
        m.contains("rollouts.jsonl: line 2:") && m.contains("advantage"),
        "{m}"
    );

    let (_g, dir) = copy_fixture("grpo-s0");
    std::fs::write(
        dir.join("summary.json"),
        "{\n  \"objective\": \"grpo\",\n  \"seed\": -1\n}",
    )
    .expect("w");
    let m = input_msg(report::load_run(&dir));
    assert!(m.contains("summary.json: line 3"), "{m}");

    let (_g, dir) = copy_fixture("luspo-s3");
    std::fs::write(dir.join("config.toml"), "seed = 3\n[objective\n").expect("write");
    let m = input_msg(report::load_run(&dir));
    assert!(m.contains("config.toml: line 2"), "{m}");
}

#[test]
fn null_floats_read_as_nan_and_are_skipped() {
    // serde_json writes a NaN metric as null; such a step must stay readable.
    let (_g, dir) = copy_fixture("grpo-s0");
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen(
        "\"response_length_mean\": 130.0",
        "\"response_length_mean\": null",
        1,
    );
    lines[3] = lines[3].replacen("\"loss\": 0.0", "\"loss\": null, \"kl\": null", 1);
    std::fs::write(&path, lines.join("\n")).expect("write");
    let run = report::load_run(&dir).expect("loads");
    assert!(run.metrics[3].response_length_mean.is_nan() && run.metrics[3].loss.is_nan());
    assert_eq!(run.metrics[3].kl, None);
    let c = report::compare(&[run]);
    // The last length is NaN, so the final-length statistic has no finite value.
    assert_eq!(c.by_objective[0].final_response_length_mean, None);
    // A null in a non-float field is still an error naming file and line.
    std::fs::write(&path, lines[..3].join("\n") + "\n{\"step\": null}\n").expect("write");
    let m = input_msg(report::load_run(&dir));
    assert!(m.contains("metrics.jsonl: line 4:"), "{m}");
}

#[test]
fn not_a_run_dir_and_missing_objective() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = input_msg(report::load_run(tmp.path()));
    assert!(m.contains("not a run directory"), "{m}");
    let m = input_msg(report::load_run(&tmp.path().join("nope")));
    assert!(
        m.contains("nope") && m.contains("not a run directory"),
        "{m}"
    );
    std::fs::write(tmp.path().join("metrics.jsonl"), "").expect("write");
    let m = input_msg(report::load_run(tmp.path()));
    assert!(m.contains("cannot tell the objective"), "{m}");
    std::fs::write(
        tmp.path().join("config.toml"),
        "[objective]\nname = \"gspo\"\n",
    )
    .expect("w");
    let run = report::load_run(tmp.path()).expect("empty run loads");
    assert_eq!((run.objective.as_str(), run.seed), ("gspo", 0));
    // An empty run still gets every file ("no data" plots).
    let out = tmp.path().join("out");
    report::write_comparison(&[run], &out).expect("write");
    for f in report::output_files(&out) {
        assert!(f.is_file(), "{}", f.display());
    }
}

#[test]
fn default_out_dir_is_common_parent_or_report() {
    let d = |v: &[&str]| report::default_out_dir(v);
    assert_eq!(
        d(&["runs/cmp/grpo", "runs/cmp/luspo"]),
        PathBuf::from("runs/cmp")
    );
    assert_eq!(d(&["runs/a/grpo", "runs/b/luspo"]), PathBuf::from("runs"));
    assert_eq!(d(&["/x/runs/a", "/x/other/b"]), PathBuf::from("/x"));
    assert_eq!(d(&["grpo", "luspo"]), PathBuf::from("report"));
    assert_eq!(d(&["./grpo"]), PathBuf::from("report"));
    assert_eq!(d(&["/a", "/b"]), PathBuf::from("report"));
}

/// CASTILLO per-prompt statistics on fixed length vectors, against numpy:
/// `v = np.array([7, 3, 12, 3, 40, 18, 5, 9, 80, 11.]); v.mean(), v.std(), [np.percentile(v, q) for q in (25, 50, 75, 99)]`
/// → 18.8, 22.86394541630993, [5.5, 10.0, 16.5, 76.4]; `w = np.array([4., 6.])` → 5.0, 1.0, [4.5, 5.0, 5.5, 5.98].
#[test]
fn castillo_statistics_match_numpy() {
    use luspo::metrics::RolloutRecord;
    use luspo::report::analysis::{analyse_lengths, CastilloPrompt};
    let v = [7.0, 3.0, 12.0, 3.0, 40.0, 18.0, 5.0, 9.0, 80.0, 11.0];
    let trunc = [false; 10];
    let p = CastilloPrompt::of("q", 3, &v, &trunc).unwrap();
    close(p.mean, 18.8);
    close(p.std, 22.86394541630993);
    close(p.min, 3.0);
    close(p.max, 80.0);
    close(p.p25, 5.5);
    close(p.p50, 10.0);
    close(p.p75, 16.5);
    close(p.p99, 76.4);
    assert_eq!((p.n, p.step, p.degenerate), (10, 3, false));
    // A response at the length limit flags its prompt.
    let mut t = trunc;
    t[8] = true;
    assert!(CastilloPrompt::of("q", 3, &v, &t).unwrap().degenerate);
    assert!(CastilloPrompt::of("q", 3, &[], &[]).is_none());

    // Through the run analysis: groups of the first and last step, means over prompts.
    let rec = |step, id: &str, length, truncated| RolloutRecord {
        step,
        prompt_id: id.into(),
        length,
        reward: 0.0,
        correct: false,
        advantage: 0.0,
        truncated,
    };
    let mut rs: Vec<RolloutRecord> = v.iter().map(|&l| rec(1, "a", l as u32, false)).collect();
    rs.push(rec(1, "b", 4, false));
    rs.push(rec(1, "b", 6, true));
    rs.push(rec(2, "a", 9, false));
    let la = analyse_lengths(&rs);
    let c = &la.castillo_first_step;
    assert_eq!((c.step, c.n_prompts), (Some(1), 2));
    assert_eq!(c.prompts[0].prompt_id, "a");
    close(c.prompts[1].p99, 5.98);
    close_opt(c.mean, (18.8 + 5.0) / 2.0);
    close_opt(c.std, (22.86394541630993 + 1.0) / 2.0);
    close_opt(c.p99, (76.4 + 5.98) / 2.0);
    close_opt(c.degenerate_frac, 0.5);
    let l = &la.castillo_last_step;
    assert_eq!((l.step, l.n_prompts), (Some(2), 1));
    close_opt(l.std, 0.0);
    close_opt(l.p25, 9.0);
    assert_eq!(analyse_lengths(&[]).castillo_last_step.step, None);
}

/// Arm labels: objectives when no run has a `[control]` method, methods when all runs share one objective,
/// `objective+method` otherwise (plain runs keep the objective).
#[test]
fn arm_labels_by_objective_or_method() {
    let run = |objective: &str, method: &str| report::Run {
        dir: PathBuf::from("x"),
        objective: objective.into(),
        method: method.into(),
        seed: 0,
        metrics: vec![],
        evals: vec![],
        rollouts: vec![],
        summary: None,
    };
    let labels = |rs: &[(&str, &str)]| {
        let runs: Vec<report::Run> = rs.iter().map(|(o, m)| run(o, m)).collect();
        report::arm_labels(&runs)
    };
    assert_eq!(
        labels(&[("grpo", "none"), ("gspo", "none")]),
        ["grpo", "gspo"]
    );
    assert_eq!(
        labels(&[("grpo", "none"), ("grpo", "hapo")]),
        ["none", "hapo"]
    );
    assert_eq!(
        labels(&[("grpo", "hapo"), ("grpo", "hapo")]),
        ["hapo", "hapo"]
    );
    assert_eq!(
        labels(&[("grpo", "none"), ("gspo", "hapo")]),
        ["grpo", "gspo+hapo"]
    );
    // compare.json groups by arm and keeps objective and method.
    let runs = vec![run("grpo", "none"), run("grpo", "dler")];
    let cmp = report::compare(&runs);
    let arms: Vec<(&str, &str, &str)> = cmp
        .by_objective
        .iter()
        .map(|o| (o.arm.as_str(), o.objective.as_str(), o.method.as_str()))
        .collect();
    assert_eq!(arms, [("none", "grpo", "none"), ("dler", "grpo", "dler")]);
}
