//! Reward modes: `coin` (a seeded Bernoulli draw independent of the text) and `flip_prob` label noise, and the
//! `last_number` extractor on real SmolLM2-135M-Instruct answers (tests/fixtures/smollm2_arith_outputs.jsonl,
//! generated with `luspo generate --chat --temperature 1 --seed 0 --max-new-tokens 64`).

use luspo::reward::{score, score_noisy, Extractor, RewardConfig, RewardMode, Verifier};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn cfg(mode: RewardMode, coin_p: f64, flip_prob: f64) -> RewardConfig {
    RewardConfig {
        mode,
        coin_p,
        flip_prob,
        ..RewardConfig::default()
    }
}

/// Accuracies of `n` scored responses (`####7` against gold 7: always right under `verify`).
fn draws(c: &RewardConfig, seed: u64, n: usize, text: &str) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| score_noisy(c, &Verifier::Integer, text, "7", 3, false, &mut rng).accuracy)
        .collect()
}

#[test]
fn coin_is_seeded_and_ignores_the_text() {
    let c = cfg(RewardMode::Coin, 0.3, 0.0);
    let a = draws(&c, 5, 500, "####7");
    assert_eq!(a, draws(&c, 5, 500, "####7"), "same seed, same rewards");
    assert_eq!(a, draws(&c, 5, 500, "wrong"), "the text does not matter");
    assert_ne!(a, draws(&c, 6, 500, "####7"), "another seed differs");
}

#[test]
fn coin_rate_within_a_binomial_bound() {
    for p in [0.1, 0.5, 0.8] {
        let n = 20_000;
        let k: f64 = draws(&cfg(RewardMode::Coin, p, 0.0), 11, n, "x")
            .iter()
            .sum();
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!((k - n as f64 * p).abs() < 5.0 * sd, "p {p}: {k} of {n}");
    }
}

#[test]
fn flip_is_applied_exactly() {
    // flip_prob = 1 flips every verdict; the total follows the flipped accuracy.
    let c = RewardConfig {
        incorrect_reward: -1.0,
        ..cfg(RewardMode::Verify, 0.5, 1.0)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let r = score_noisy(&c, &Verifier::Integer, "####7", "7", 3, false, &mut rng);
    assert_eq!((r.accuracy, r.total), (0.0, -1.0));
    let r = score_noisy(&c, &Verifier::Integer, "####8", "7", 3, false, &mut rng);
    assert_eq!((r.accuracy, r.total), (1.0, 1.0));
    // flip_prob = 0.25 on an always-right answer: exactly the draws below 0.25 are flipped.
    let c = cfg(RewardMode::Verify, 0.5, 0.25);
    let got = draws(&c, 3, 2000, "####7");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let want: Vec<f64> = (0..2000)
        .map(|_| {
            if rand::Rng::random_bool(&mut rng, 0.25) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    assert_eq!(got, want);
    // flip_prob = 0 draws nothing and equals `score`.
    let c = RewardConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for t in ["####7", "####8", ""] {
        assert_eq!(
            score_noisy(&c, &Verifier::Integer, t, "7", 3, false, &mut rng),
            score(&c, &Verifier::Integer, t, "7", 3, false)
        );
    }
}

#[test]
fn bad_probabilities_are_rejected() {
    for (p, f) in [(1.5, 0.0), (0.5, -0.1), (f64::NAN, 0.0)] {
        let e = cfg(RewardMode::Coin, p, f)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("reward."), "{e}");
    }
}

#[test]
fn last_number_on_real_smollm2_answers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_arith_outputs.jsonl"
    );
    let v = Verifier::Math {
        extractors: vec![Extractor::LastNumber],
        percent_lenient: false,
    };
    let text = std::fs::read_to_string(path).unwrap();
    // Read off the saved texts by hand: (last number, correct). None of the six sampled answers is right.
    let want: [(Option<&str>, bool); 6] = [
        (None, false),
        (Some("2"), false),
        (Some("44"), false),
        (Some("15"), false),
        (None, false),
        (Some("2"), false),
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len());
    for (line, (ex, ok)) in lines.iter().zip(want) {
        let d: serde_json::Value = serde_json::from_str(line).unwrap();
        let (resp, gold) = (d["text"].as_str().unwrap(), d["answer"].as_str().unwrap());
        let got = v.check(resp, gold);
        assert_eq!(got.extracted.as_deref(), ex, "{resp}");
        assert_eq!(got.correct, ok, "{resp}");
    }
    // The same verifier accepts a correct free-text answer.
    assert!(
        v.check("To find 23 + 48, add them: 23 + 48 = 71.", "71")
            .correct
    );
}

#[test]
fn last_number_hand_cases() {
    use luspo::reward::verify::extract_last_number as x;
    assert_eq!(x("23 + 48 = 71."), Some("71".into()));
    assert_eq!(x("The answer is 1,234 apples"), Some("1234".into()));
    assert_eq!(x("It is -5, I think"), Some("-5".into()));
    assert_eq!(x("pi is 3.14."), Some("3.14".into()));
    assert_eq!(x("no digits"), None);
}
