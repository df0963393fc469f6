//! Procedural families: exact formats of research/data.md §5, determinism, train/eval disjointness, demos that
//! verify in every style, style inference, alphabets and length hints.

use std::collections::HashSet;

use luspo::reward::{score, RewardConfig, Verifier};
use luspo::task::{build, solve_countdown, split_of, Problem, Prompt, Split, TaskConfig, TaskRng};
use rand::SeedableRng;

fn cfg(name: &str) -> TaskConfig {
    TaskConfig {
        name: name.into(),
        ..TaskConfig::default()
    }
}

fn text_problem(prompt: &str, answer: &str) -> Problem {
    Problem {
        id: prompt.into(),
        prompt: Prompt::Text(prompt.into()),
        answer: answer.into(),
    }
}

fn rng() -> TaskRng {
    TaskRng::seed_from_u64(1)
}

#[test]
fn parity_formats_match_data_md() {
    let t = build(&cfg("parity")).expect("builds");
    let p = text_problem("P1011001110100101:", "1");
    let mut r = rng();
    assert_eq!(t.demo(&p, "g1", &mut r).unwrap(), "1101110100111001####1");
    assert_eq!(t.demo(&p, "g2", &mut r).unwrap(), "11110101####1");
    assert_eq!(t.demo(&p, "g4", &mut r).unwrap(), "1111####1");
    assert_eq!(t.demo(&p, "direct", &mut r).unwrap(), "####1");
    // Partial last chunk: 5 bits with g2 → states after bits 2, 4, 5.
    assert_eq!(
        t.demo(&text_problem("P11011:", "0"), "g2", &mut r).unwrap(),
        "010####0"
    );
    assert!(t.demo(&p, "h3", &mut r).is_err());
    // Running sum mod 3.
    let t3 = build(&TaskConfig {
        modulus: 3,
        ..cfg("parity")
    })
    .unwrap();
    assert_eq!(
        t3.demo(&text_problem("P2121:", "0"), "g1", &mut r).unwrap(),
        "2020####0"
    );
}

#[test]
fn addition_formats_match_data_md() {
    let t = build(&cfg("addition")).expect("builds");
    let p = text_problem("A4729+386:", "5115");
    let mut r = rng();
    assert_eq!(
        t.demo(&p, "g2", &mut r).unwrap(),
        "29+86+0=115;47+03+1=051;####5115"
    );
    assert_eq!(
        t.demo(&p, "g1", &mut r).unwrap(),
        "9+6+0=15;2+8+1=11;7+3+1=11;4+0+1=05;####5115"
    );
    assert_eq!(t.demo(&p, "direct", &mut r).unwrap(), "####5115");
    // Final carry becomes the leading digit; three operands.
    assert_eq!(
        t.demo(&text_problem("A99+1:", "100"), "g1", &mut r)
            .unwrap(),
        "9+1+0=10;9+0+1=10;####100"
    );
    assert_eq!(
        t.demo(&text_problem("A9+9+9:", "27"), "g1", &mut r)
            .unwrap(),
        "9+9+9+0=27;####27"
    );
    assert_eq!(
        t.style_of(&p, "29+86+0=115;47+03+1=051;####5115")
            .as_deref(),
        Some("g2")
    );
    assert_eq!(
        t.style_of(&p, "9+6+0=15;####5115"),
        None,
        "wrong step count"
    );
}

#[test]
fn countdown_solver_and_demo() {
    let (steps, expr) = solve_countdown(&[3, 7, 9], 30).expect("solvable");
    assert_eq!(steps.len(), 2);
    assert!(
        luspo::reward::verify::check_countdown(&expr, "3,7,9>30", true),
        "{expr}"
    );
    assert!(solve_countdown(&[1, 1, 1], 50).is_none());
    let t = build(&cfg("countdown")).unwrap();
    let p = text_problem("C3,7,9>30:", "3,7,9>30");
    let mut r = rng();
    let d = t.demo(&p, "a2", &mut r).unwrap();
    assert_eq!(d.matches('|').count(), 2, "{d}");
    assert_eq!(d.matches('x').count(), 2, "{d}");
    assert!(t.verifier().check(&d, &p.answer).correct, "{d}");
    assert_eq!(t.style_of(&p, &d).as_deref(), Some("a2"));
    assert_eq!(
        t.style_of(&p, "9-7=2,2*3=6x|9+7=16,16+3=19x|7*3=21,21+9=30!####7*3+9")
            .as_deref(),
        Some("a2")
    );
}

fn families() -> Vec<TaskConfig> {
    vec![
        TaskConfig {
            n_bits_min: 8,
            n_bits_max: 24,
            ..cfg("parity")
        },
        TaskConfig {
            modulus: 5,
            ..cfg("parity")
        },
        TaskConfig {
            digits_min: 1,
            digits_max: 8,
            ..cfg("addition")
        },
        TaskConfig {
            operands: 3,
            p_long_carry: 0.5,
            ..cfg("addition")
        },
        TaskConfig {
            cd_numbers: 4,
            cd_target_min: 20,
            cd_target_max: 60,
            ..cfg("countdown")
        },
        cfg("countdown"),
        cfg("wordproblem"),
        TaskConfig {
            wp_answer_format: "boxed".into(),
            ..cfg("wordproblem")
        },
    ]
}

#[test]
fn demos_verify_in_every_style_and_styles_are_recognised() {
    for c in families() {
        let t = build(&c).unwrap();
        let v = t.verifier();
        let mut r = rng();
        let probs = t.problems(Split::Train, 60, 3).unwrap();
        let mut max_len = 0;
        for p in &probs {
            for s in t.styles() {
                let d = t.demo(p, &s, &mut r).unwrap();
                let b = score(&RewardConfig::default(), &v, &d, &p.answer, d.len(), false);
                assert_eq!(
                    b.accuracy, 1.0,
                    "{}: {s} demo {d:?} for {:?} does not verify",
                    c.name, p.prompt
                );
                assert_eq!(
                    t.style_of(p, &d).as_deref(),
                    Some(s.as_str()),
                    "{}: {d:?}",
                    c.name
                );
                max_len = max_len.max(d.chars().count());
            }
        }
        assert!(
            max_len <= t.max_response_len_hint(),
            "{}: {max_len} > hint",
            c.name
        );
        if t.alphabet().is_some() {
            assert!(matches!(v, Verifier::Integer | Verifier::Countdown { .. }));
        }
    }
}

#[test]
fn wrong_answers_do_not_verify() {
    for c in families() {
        let t = build(&c).unwrap();
        let v = t.verifier();
        for p in t.problems(Split::Eval, 30, 9).unwrap() {
            let wrong = match &v {
                Verifier::Countdown { .. } => "####1+1".to_string(),
                _ => format!("#### {}", p.answer.parse::<i64>().unwrap() + 1),
            };
            assert!(!v.check(&wrong, &p.answer).correct, "{}: {wrong}", c.name);
        }
    }
}

#[test]
fn char_level_alphabet_covers_prompts_and_demos_with_filler() {
    for mut c in families() {
        c.filler_prob = 0.3;
        let t = build(&c).unwrap();
        let Some(alpha) = t.alphabet() else { continue };
        let alpha: HashSet<char> = alpha.chars().collect();
        let mut r = rng();
        let mut fillers = 0;
        for p in t.problems(Split::Train, 40, 5).unwrap() {
            let Prompt::Text(pt) = &p.prompt else {
                panic!("char-level prompt is text")
            };
            for s in t.styles() {
                let d = t.demo(&p, &s, &mut r).unwrap();
                for ch in pt.chars().chain(d.chars()) {
                    assert!(
                        alpha.contains(&ch),
                        "{}: {ch:?} not in alphabet ({pt} {d})",
                        c.name
                    );
                }
                fillers += d.matches('.').count();
                assert!(
                    t.verifier().check(&d, &p.answer).correct,
                    "{}: filler demo {d}",
                    c.name
                );
                assert_eq!(t.style_of(&p, &d).as_deref(), Some(s.as_str()));
                assert!(
                    !d.rsplit_once("####").unwrap().1.contains('.'),
                    "no filler inside the answer"
                );
            }
        }
        assert!(fillers > 0, "{}: filler_prob 0.3 inserted nothing", c.name);
    }
    // Filler is pure insertion: removing it gives the plain demo (parity/addition are rng-free otherwise).
    let t0 = build(&cfg("addition")).unwrap();
    let tf = build(&TaskConfig {
        filler_prob: 0.5,
        ..cfg("addition")
    })
    .unwrap();
    let p = text_problem("A4729+386:", "5115");
    let d = tf.demo(&p, "g1", &mut rng()).unwrap();
    assert_eq!(d.replace('.', ""), t0.demo(&p, "g1", &mut rng()).unwrap());
}

#[test]
fn problems_are_deterministic_and_splits_disjoint() {
    for c in families() {
        let t = build(&c).unwrap();
        let a = t.problems(Split::Train, 50, 7).unwrap();
        assert_eq!(a, t.problems(Split::Train, 50, 7).unwrap(), "{}", c.name);
        assert_ne!(a, t.problems(Split::Train, 50, 8).unwrap(), "{}", c.name);
        let eval = t.problems(Split::Eval, 100, 7).unwrap();
        let eval_ids: HashSet<&str> = eval.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            eval_ids.len(),
            100,
            "{}: eval problems are distinct",
            c.name
        );
        for p in &eval {
            assert_eq!(split_of(&p.id, c.eval_fraction), Split::Eval);
        }
        let mut r = rng();
        for _ in 0..300 {
            let p = t.sample_train(&mut r).unwrap();
            assert!(
                !eval_ids.contains(p.id.as_str()),
                "{}: {} in both splits",
                c.name,
                p.id
            );
        }
        for p in t.problems(Split::Train, 300, 11).unwrap() {
            assert!(
                !eval_ids.contains(p.id.as_str()),
                "{}: {} in both splits",
                c.name,
                p.id
            );
        }
    }
}

#[test]
fn small_space_split_is_disjoint() {
    // 8..=9 bits: 768 problems in all; every train draw must avoid every eval problem.
    let t = build(&TaskConfig {
        n_bits_min: 8,
        n_bits_max: 9,
        eval_fraction: 0.2,
        ..cfg("parity")
    })
    .unwrap();
    let eval: HashSet<String> = t
        .problems(Split::Eval, 100, 1)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let train: HashSet<String> = t
        .problems(Split::Train, 2000, 2)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(eval.is_disjoint(&train));
    assert!(
        train.len() > 400,
        "train covers most of its share: {}",
        train.len()
    );
}

#[test]
fn difficulty_knobs_are_respected() {
    let t = build(&TaskConfig {
        n_bits_min: 5,
        n_bits_max: 7,
        ..cfg("parity")
    })
    .unwrap();
    for p in t.problems(Split::Train, 100, 1).unwrap() {
        let n = p.id.len() - 2;
        assert!((5..=7).contains(&n), "{}", p.id);
    }
    let t = build(&TaskConfig {
        digits_min: 3,
        digits_max: 4,
        operands: 3,
        ..cfg("addition")
    })
    .unwrap();
    for p in t.problems(Split::Train, 100, 1).unwrap() {
        let body = p.id.trim_start_matches('A').trim_end_matches(':');
        let ops: Vec<&str> = body.split('+').collect();
        assert_eq!(ops.len(), 3);
        assert!((3..=4).contains(&ops[0].len()));
        let sum: u64 = ops.iter().map(|o| o.parse::<u64>().unwrap()).sum();
        assert_eq!(p.answer, sum.to_string());
    }
    let t = build(&TaskConfig {
        cd_target_min: 40,
        cd_target_max: 45,
        ..cfg("countdown")
    })
    .unwrap();
    for p in t.problems(Split::Train, 50, 1).unwrap() {
        let target: i64 = p.answer.split('>').nth(1).unwrap().parse().unwrap();
        assert!((40..=45).contains(&target));
        let nums: Vec<i64> = p
            .answer
            .split('>')
            .next()
            .unwrap()
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(solve_countdown(&nums, target).is_some());
    }
}

#[test]
fn style_mix_sampler_follows_weights() {
    let mut c = cfg("parity");
    c.style_weights = [("direct".to_string(), 3.0), ("g1".to_string(), 1.0)]
        .into_iter()
        .collect();
    let t = build(&c).unwrap();
    assert_eq!(t.styles(), vec!["direct".to_string(), "g1".to_string()]);
    let p = text_problem("P10110:", "1");
    let mut r = rng();
    let mut direct = 0;
    for _ in 0..4000 {
        let (s, d) = t.sample_demo(&p, &mut r).unwrap();
        assert_eq!(t.style_of(&p, &d).as_deref(), Some(s.as_str()));
        direct += usize::from(s == "direct");
    }
    // Expected 3000 of 4000; binomial sd ≈ 27.
    assert!((2850..=3150).contains(&direct), "{direct}");
    let mut bad = cfg("parity");
    bad.style_weights = [("a1".to_string(), 1.0)].into_iter().collect();
    let err = build(&bad).err().expect("unknown style");
    assert!(err.to_string().contains("a1"), "{err}");
}

#[test]
fn config_toml_and_errors() {
    let c: TaskConfig = toml::from_str(
        "name = \"addition\"\ndigits_max = 4\n[style_weights]\ng1 = 2.0\ndirect = 1.0",
    )
    .expect("parses");
    assert_eq!(
        (c.name.as_str(), c.digits_max, c.digits_min),
        ("addition", 4, 2)
    );
    assert!(
        toml::from_str::<TaskConfig>("n_bits = 4").is_err(),
        "unknown key"
    );
    for (bad, key) in [
        (
            TaskConfig {
                name: "sudoku".into(),
                ..TaskConfig::default()
            },
            "sudoku",
        ),
        (
            TaskConfig {
                n_bits_min: 9,
                n_bits_max: 8,
                ..cfg("parity")
            },
            "n_bits_min",
        ),
        (
            TaskConfig {
                modulus: 11,
                ..cfg("parity")
            },
            "modulus",
        ),
        (
            TaskConfig {
                operands: 4,
                ..cfg("addition")
            },
            "operands",
        ),
        (
            TaskConfig {
                cd_numbers: 7,
                ..cfg("countdown")
            },
            "cd_numbers",
        ),
        (
            TaskConfig {
                wp_answer_format: "xml".into(),
                ..cfg("wordproblem")
            },
            "wp_answer_format",
        ),
        (
            TaskConfig {
                eval_fraction: 1.5,
                ..cfg("parity")
            },
            "eval_fraction",
        ),
        (cfg("jsonl"), "task.path"),
    ] {
        let err = build(&bad)
            .err()
            .unwrap_or_else(|| panic!("{key} should be rejected"));
        let msg = err.to_string();
        assert!(msg.contains(key) && !msg.contains('\n'), "{msg}");
    }
    let t = build(&TaskConfig {
        eval_fraction: 0.0,
        ..cfg("parity")
    })
    .unwrap();
    assert!(t.problems(Split::Eval, 1, 0).is_err());
}

#[test]
fn wordproblem_prompts_are_chat_and_demos_end_with_answer() {
    let t = build(&cfg("wordproblem")).unwrap();
    assert!(t.alphabet().is_none());
    let mut r = rng();
    let probs = t.problems(Split::Train, 30, 1).unwrap();
    let templates: HashSet<&str> = probs.iter().map(|p| &p.id[..3]).collect();
    assert!(templates.len() >= 4, "{templates:?}");
    for p in &probs {
        let Prompt::Messages(m) = &p.prompt else {
            panic!("chat prompt")
        };
        assert_eq!(m[0].role, "user");
        assert!(m[0].content.contains("####"));
        assert!(p.answer.parse::<i64>().unwrap() >= 0);
        let d = t.demo(p, "steps", &mut r).unwrap();
        assert!(d.ends_with(&format!("#### {}", p.answer)), "{d}");
        // The worked steps arrive at the answer: the last `= X.` of the explanation is the gold.
        let last_eq = d.rsplit_once("= ").unwrap().1.split('.').next().unwrap();
        assert_eq!(last_eq, p.answer, "{d}");
        let steps = d.matches(" = ").count();
        assert_eq!(t.difficulty_of(p), Some(steps), "{d}");
    }
    let tb = build(&TaskConfig {
        wp_answer_format: "boxed".into(),
        ..cfg("wordproblem")
    })
    .unwrap();
    let p = &tb.problems(Split::Train, 1, 1).unwrap()[0];
    assert!(tb
        .demo(p, "direct", &mut r)
        .unwrap()
        .contains(&format!("\\boxed{{{}}}", p.answer)));
}

#[test]
fn split_hash_spreads_similar_ids() {
    // Ids differing only in the last characters (row indices) must still spread over [0, 1).
    let eval = (0..2000)
        .filter(|i| split_of(&i.to_string(), 0.1) == Split::Eval)
        .count();
    // Expected 200; binomial sd ≈ 13.4.
    assert!((150..=250).contains(&eval), "{eval}");
    let eval = (100..1100)
        .filter(|i| split_of(&format!("P{i:b}:"), 0.5) == Split::Eval)
        .count();
    assert!((430..=570).contains(&eval), "{eval}");
}

#[test]
fn difficulty_of_problems() {
    let t = build(&cfg("parity")).unwrap();
    assert_eq!(t.difficulty_of(&text_problem("P1011:", "1")), Some(4));
    let t = build(&cfg("addition")).unwrap();
    assert_eq!(
        t.difficulty_of(&text_problem("A4729+386:", "5115")),
        Some(4)
    );
    assert_eq!(t.difficulty_of(&text_problem("P1011:", "1")), None);
    let t = build(&cfg("countdown")).unwrap();
    assert_eq!(
        t.difficulty_of(&text_problem("C3,7,9,2>30:", "3,7,9,2>30")),
        Some(4)
    );
}

#[test]
fn char_tokenizer_round_trips_prompts_and_demos() {
    for mut c in families() {
        c.filler_prob = 0.2;
        let t = build(&c).unwrap();
        let Some(alpha) = t.alphabet() else { continue };
        let tok = luspo::model::tokenizer::Tok::char_level(&alpha, &["<eos>", "<pad>"]).unwrap();
        let mut r = rng();
        for p in t.problems(Split::Eval, 10, 2).unwrap() {
            let (_, d) = t.sample_demo(&p, &mut r).unwrap();
            let text = format!("{}{d}", p.prompt.flat());
            let ids = tok.encode(&text, false).unwrap();
            assert_eq!(ids.len(), text.chars().count(), "one token per character");
            assert_eq!(tok.decode(&ids, true).unwrap(), text);
        }
    }
}
