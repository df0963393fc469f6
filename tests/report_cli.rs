//! `luspo report` end to end through the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/runs")
        .join(name)
}

fn luspo(args: &[&std::ffi::OsStr], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_luspo"))
        .arg("report")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("luspo runs")
}

fn copy_run(name: &str, dst_parent: &Path) -> PathBuf {
    let dst = dst_parent.join(name);
    std::fs::create_dir_all(&dst).expect("mkdir");
    for e in std::fs::read_dir(fixture(name)).expect("fixture") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
    }
    dst
}

#[test]
fn report_writes_into_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("rep");
    let (a, b, c) = (fixture("grpo-s0"), fixture("grpo-s1"), fixture("luspo-s3"));
    let o = luspo(
        &[
            a.as_os_str(),
            b.as_os_str(),
            c.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("report.md"));
    for f in luspo::report::output_files(&out) {
        assert!(f.is_file(), "{}", f.display());
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).expect("read"))
            .expect("json");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["by_objective"][1]["objective"], "luspo");
}

#[test]
fn report_defaults_to_common_parent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = tmp.path().join("runs");
    copy_run("grpo-s0", &parent);
    copy_run("luspo-s3", &parent);
    let o = luspo(
        &["runs/grpo-s0".as_ref(), "runs/luspo-s3".as_ref()],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(parent.join("report.md").is_file());
    assert!(parent.join("plots/entropy.png").is_file());
    // Run dirs in the current folder: ./report.
    let o = luspo(&["grpo-s0".as_ref()], &parent);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(parent.join("report/compare.json").is_file());
}

#[test]
fn report_errors_are_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = luspo(
        &[fixture("grpo-s0").as_os_str(), "src".as_ref()],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: src: not a run directory"), "{err}");

    let run = copy_run("grpo-s1", tmp.path());
    std::fs::write(run.join("eval.jsonl"), "{\"step\": 0}\n").expect("write");
    let o = luspo(&[run.as_os_str()], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("eval.jsonl: line 1:") && err.contains("missing field"),
        "{err}"
    );
    assert!(!tmp.path().join("compare.json").exists());
}
