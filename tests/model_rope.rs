//! RoPE frequencies from the config: default, linear, dynamic, llama3 and yarn, checked against hand computations.

use luspo::model::Config;

fn cfg(extra: serde_json::Value) -> Config {
    let mut v = serde_json::json!({
        "model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 4096
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// head_dim 16 → 8 frequencies base^(-2i/16).
fn plain(base: f64) -> Vec<f64> {
    (0..8).map(|i| base.powf(-(2 * i) as f64 / 16.0)).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * y.abs(), "{a:?} vs {b:?}");
    }
}

#[test]
fn default_base_sources() {
    // no theta anywhere: 10000
    let f = cfg(serde_json::json!({})).rope_freqs(false).unwrap();
    close(&f.inv_freq, &plain(10000.0), 1e-15);
    assert_eq!(f.attention_factor, 1.0);
    // top-level rope_theta
    let f = cfg(serde_json::json!({"rope_theta": 500000.0}))
        .rope_freqs(false)
        .unwrap();
    close(&f.inv_freq, &plain(500000.0), 1e-15);
    // transformers 5: rope_parameters wins
    let c = cfg(
        serde_json::json!({"rope_theta": 1.0, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}),
    );
    close(&c.rope_freqs(false).unwrap().inv_freq, &plain(1e6), 1e-15);
    // f32 mode rounds through f32 like torch
    let f = cfg(serde_json::json!({})).rope_freqs(true).unwrap();
    for (x, y) in f.inv_freq.iter().zip(plain(10000.0)) {
        assert_eq!(*x, *x as f32 as f64);
        assert!((x - y).abs() < 1e-6 * y);
    }
}

#[test]
fn linear_dynamic_and_unknown() {
    let f = cfg(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 4.0}}))
        .rope_freqs(false)
        .unwrap();
    let want: Vec<f64> = plain(10000.0).iter().map(|x| x / 4.0).collect();
    close(&f.inv_freq, &want, 1e-15);
    let f = cfg(serde_json::json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}))
        .rope_freqs(false)
        .unwrap();
    close(&f.inv_freq, &plain(10000.0), 1e-15);
    let e = cfg(serde_json::json!({"rope_scaling": {"rope_type": "longrope"}}))
        .rope_freqs(false)
        .unwrap_err();
    assert!(e.to_string().contains("longrope"), "{e}");
    let e = cfg(serde_json::json!({"rope_scaling": {"rope_type": "linear"}}))
        .rope_freqs(false)
        .unwrap_err();
    assert!(e.to_string().contains("factor"), "{e}");
}

/// Llama 3.1 scaling: wavelengths above old_ctx/low are divided by factor, below old_ctx/high kept, smooth between.
#[test]
fn llama3_by_hand() {
    let c = cfg(serde_json::json!({"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}));
    let f = c.rope_freqs(false).unwrap();
    let base = plain(500000.0);
    let two_pi = 2.0 * std::f64::consts::PI;
    let mut seen = [0; 3];
    for (i, (&got, &b)) in f.inv_freq.iter().zip(&base).enumerate() {
        let wl = two_pi / b;
        let want = if wl < 8192.0 / 4.0 {
            seen[0] += 1;
            b
        } else if wl > 8192.0 {
            seen[1] += 1;
            b / 8.0
        } else {
            seen[2] += 1;
            let smooth = (8192.0 / wl - 1.0) / (4.0 - 1.0);
            (1.0 - smooth) * b / 8.0 + smooth * b
        };
        assert!((got - want).abs() <= 1e-14 * want, "i={i}: {got} vs {want}");
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "all three bands exercised: {seen:?}"
    );
}

/// YaRN: attention factor 0.1 ln(s) + 1; high frequencies extrapolated, low interpolated, linear ramp between.
#[test]
fn yarn_by_hand() {
    let c = cfg(serde_json::json!({"rope_theta": 10000.0, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}}));
    let f = c.rope_freqs(false).unwrap();
    assert!((f.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    let base = plain(10000.0);
    // correction range for dim 16, base 1e4, orig 1024, beta_fast 32, beta_slow 1
    let corr = |rot: f64| {
        16.0 * (1024.0 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * 10000f64.ln())
    };
    let (lo, hi) = (corr(32.0).floor().max(0.0), corr(1.0).ceil().min(15.0));
    assert_eq!((lo, hi), (1.0, 5.0), "hand-computed correction range");
    for (i, (&got, &b)) in f.inv_freq.iter().zip(&base).enumerate() {
        let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
        let want = b / 4.0 * ramp + b * (1.0 - ramp);
        assert!((got - want).abs() <= 1e-14 * want, "i={i}: {got} vs {want}");
    }
    assert_eq!(f.inv_freq[0], base[0], "fastest frequency extrapolated");
    assert!(
        (f.inv_freq[7] - base[7] / 4.0).abs() < 1e-18,
        "slowest interpolated"
    );
    // explicit attention_factor wins
    let c = cfg(
        serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.5}}),
    );
    assert_eq!(c.rope_freqs(false).unwrap().attention_factor, 0.5);
}
