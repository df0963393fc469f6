//! Reward shaping: the DAPO soft overlong penalty against hand-computed values, and the breakdown of `score`.

use luspo::reward::{overlong_penalty, score, RewardConfig, Verifier};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn overlong_penalty_hand_values() {
    // DAPO setting: L_max = 20480, L_buf = 4096, factor 1 → ramp from 16384 to 20480.
    let p = |len| overlong_penalty(len, 20480, 4096, 1.0);
    assert_eq!(p(100), 0.0);
    assert_eq!(p(16384), 0.0);
    assert!(close(p(16385), -1.0 / 4096.0));
    assert!(close(p(18432), -0.5));
    assert!(close(p(20480), -1.0));
    assert!(close(p(22528), -1.5), "not clipped beyond L_max, as verl");
    // L_max = 100, L_buf = 20, factor 0.5: len 90 → (80 − 90)/20·0.5 = −0.25.
    assert!(close(overlong_penalty(90, 100, 20, 0.5), -0.25));
    assert!(close(overlong_penalty(81, 100, 20, 0.5), -0.025));
    assert_eq!(overlong_penalty(80, 100, 20, 0.5), 0.0);
    assert_eq!(overlong_penalty(50, 100, 0, 1.0), 0.0);
}

#[test]
fn score_breakdown_terms() {
    let cfg = RewardConfig {
        format_weight: 0.1,
        overlong: true,
        overlong_max_len: 100,
        overlong_buffer: 20,
        ..RewardConfig::default()
    };
    let v = Verifier::Integer;
    let r = score(&cfg, &v, "11####1", "1", 90, false);
    assert_eq!((r.accuracy, r.format), (1.0, 0.1));
    assert!(close(r.overlong, -0.5));
    assert!(close(r.total, 0.6));
    assert!(r.format_ok);
    // Truncated: accuracy 0 by default, format and overlong still apply.
    let r = score(&cfg, &v, "11####1", "1", 100, true);
    assert_eq!(r.accuracy, 0.0);
    assert!(close(r.total, 0.1 - 1.0));
    let r = score(
        &RewardConfig {
            score_truncated: true,
            ..cfg.clone()
        },
        &v,
        "11####1",
        "1",
        10,
        true,
    );
    assert_eq!(r.accuracy, 1.0);
    assert!(close(r.total, 1.1));
    // Wrong answer, no `####`: nothing but the penalty.
    let r = score(&cfg, &v, "1111", "1", 10, false);
    assert_eq!(
        (r.accuracy, r.format, r.overlong, r.total, r.format_ok),
        (0.0, 0.0, 0.0, 0.0, false)
    );
    // DAPO-style ±1 accuracy reward.
    let dapo = RewardConfig {
        incorrect_reward: -1.0,
        ..RewardConfig::default()
    };
    assert_eq!(score(&dapo, &v, "####0", "1", 5, false).total, -1.0);
    assert_eq!(score(&dapo, &v, "####1", "1", 5, false).total, 1.0);
    // Defaults: plain 0/1 accuracy.
    let r = score(
        &RewardConfig::default(),
        &Verifier::math(),
        "\\boxed{7}",
        "7",
        5000,
        false,
    );
    assert_eq!((r.total, r.overlong), (1.0, 0.0));
    assert_eq!(r.extractor, Some(luspo::reward::Extractor::Boxed));
}

#[test]
fn config_toml_and_validation() {
    let c: RewardConfig = toml::from_str("overlong = true\noverlong_buffer = 8").expect("parses");
    assert_eq!(c.overlong_buffer, 8);
    assert_eq!(c.correct_reward, 1.0);
    assert!(
        toml::from_str::<RewardConfig>("overlong_buf = 8").is_err(),
        "unknown key"
    );
    let r = c.resolved(64).expect("resolves");
    assert_eq!(r.overlong_max_len, 64);
    let err = c.resolved(4).expect_err("buffer > max");
    assert!(err.to_string().contains("overlong_buffer"), "{err}");
    let bad = RewardConfig {
        overlong: true,
        overlong_buffer: 0,
        overlong_max_len: 10,
        ..RewardConfig::default()
    };
    assert!(bad.validate().is_err());
    assert!(RewardConfig {
        format_weight: f64::NAN,
        ..RewardConfig::default()
    }
    .validate()
    .is_err());
}
