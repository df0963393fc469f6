//! Property tests of the numeric normaliser and the integer/countdown verifiers.

use luspo::reward::verify::check_countdown;
use luspo::reward::{parse_number, Verifier};
use luspo::task::solve_countdown;
use proptest::prelude::*;

/// `n` with thousands separators: 1234567 → `1,234,567`.
fn with_commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn integers_in_every_written_form_match(n in 0u64..10_000_000_000, zeros in 0usize..3, neg: bool) {
        let gold = if neg { format!("-{n}") } else { n.to_string() };
        let sign = if neg { "-" } else { "" };
        let v = Verifier::math();
        for form in [
            format!("{sign}{}", with_commas(n)),
            format!("{sign}{}{n}", "0".repeat(zeros)),
            format!("{sign}{n}.0"),
            format!("{sign}{n}."),
            format!("${sign}{n}"),
            format!("x = {sign}{n}"),
            format!("{sign}\\frac{{{}}}{{2}}", 2 * n as u128),
        ] {
            let boxed = format!("so \\boxed{{{form}}}");
            let hash = format!("#### {form}");
            prop_assert!(v.check(&boxed, &gold).correct, "{} vs {}", boxed, gold);
            prop_assert!(v.check(&hash, &gold).correct, "{} vs {}", hash, gold);
        }
        let (plain, off_by_one) = (n.to_string(), (n + 1).to_string());
        let wrong_boxed = format!("\\boxed{{{off_by_one}}}");
        prop_assert!(!v.check(&wrong_boxed, &plain).correct);
        let int = Verifier::Integer;
        let padded = format!("####{}{plain}", "0".repeat(zeros));
        let wrong = format!("####{off_by_one}");
        prop_assert!(int.check(&padded, &plain).correct);
        prop_assert!(!int.check(&wrong, &plain).correct);
    }

    #[test]
    fn fractions_and_decimals_are_exact(p in -10_000i64..10_000, q in prop_oneof![1i64..1000, Just(128i64), Just(64i64)]) {
        let a = parse_number(&format!("\\frac{{{p}}}{{{q}}}")).expect("fraction");
        let b = parse_number(&format!("{p}/{q}")).map(|x| x.value);
        if p >= 0 {
            prop_assert_eq!(Some(a.value.clone()), b);
        }
        // p/q·q = p exactly.
        let back = a.value * num_rational::BigRational::from_integer(q.into());
        prop_assert_eq!(back, num_rational::BigRational::from_integer(p.into()));
        // A 6-place decimal matches the fraction by math-verify's rounding rule iff it is the rounded value.
        // Skip exact ties at the 7th place (e.g. 1/128 = 0.0078125): Rust's `{:.6}` rounds them to even,
        // the verifier (BigRational::round) away from zero.
        let twice = p as i128 * 2_000_000;
        prop_assume!(!(twice % q as i128 == 0 && (twice / q as i128) % 2 != 0));
        let x = p as f64 / q as f64;
        let dec = format!("\\boxed{{{x:.6}}}");
        let frac = format!("\\frac{{{p}}}{{{q}}}");
        prop_assert!(Verifier::math().check(&dec, &frac).correct, "{} vs {}", dec, frac);
    }

    #[test]
    fn countdown_solutions_verify(nums in proptest::collection::vec(1i64..10, 3..5), target in 1i64..60) {
        let gold = format!("{}>{target}", nums.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","));
        match solve_countdown(&nums, target) {
            Some((steps, expr)) => {
                prop_assert_eq!(steps.len(), nums.len() - 1);
                prop_assert!(check_countdown(&expr, &gold, true), "{} for {}", expr, gold);
            }
            None => {
                // No exact solution: the sum of all numbers is not the target, for one.
                let sum: String = nums.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("+");
                prop_assert!(!check_countdown(&sum, &gold, true));
            }
        }
    }
}
