//! `report.md`: final figures per objective, the plots, and the length-analysis tables.

use super::analysis::{LengthAnalysis, Stat};
use super::Comparison;
use std::fmt::Write;

/// A number with `d` decimals, or "—".
fn num(x: Option<f64>, d: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.d$}"),
        _ => "—".to_string(),
    }
}

/// A fraction as a percentage with one decimal, or "—".
fn pct(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:.1}%", 100.0 * v),
        _ => "—".to_string(),
    }
}

/// "mean ± std" (std omitted for one seed); `percent` formats fractions as percentages.
fn stat(s: &Option<Stat>, percent: bool) -> String {
    let Some(s) = s else { return "—".to_string() };
    let (m, sd) = if percent {
        (pct(Some(s.mean)), format!("{:.1}", 100.0 * s.std))
    } else {
        (num(Some(s.mean), 1), format!("{:.1}", s.std))
    };
    if s.n > 1 {
        format!("{m} ± {sd}")
    } else {
        m
    }
}

fn diff(a: &Option<Stat>, b: &Option<Stat>) -> Option<f64> {
    Some(b.as_ref()?.mean - a.as_ref()?.mean)
}

/// The first and last per-step value of a length figure.
fn first_last(la: &LengthAnalysis, f: fn(&super::analysis::StepLengths) -> Option<f64>) -> String {
    let v: Vec<f64> = la.by_step.iter().filter_map(f).collect();
    match (v.first(), v.last()) {
        (Some(a), Some(b)) => format!("{a:.1} → {b:.1}"),
        _ => "—".to_string(),
    }
}

/// Renders the Markdown report of a comparison (plots referenced as `plots/<name>.png`).
pub fn render(cmp: &Comparison) -> String {
    let mut s = String::new();
    // `write!` into a String cannot fail; the results are ignored below for that reason.
    let _ = writeln!(s, "# luspo comparison\n");
    let objectives: Vec<&str> = cmp.by_objective.iter().map(|o| o.arm.as_str()).collect();
    let _ = writeln!(
        s,
        "{} run(s), arms: {}. Figures over seeds are mean ± sample std.\n",
        cmp.runs.len(),
        objectives.join(", ")
    );

    let _ = writeln!(s, "## Final figures (held-out evaluation)\n");
    let _ = writeln!(
        s,
        "| arm | seeds | accuracy before | accuracy after | Δ accuracy | length before | length after | Δ length |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in &cmp.by_objective {
        let dacc = diff(&o.eval_accuracy_before, &o.eval_accuracy_after)
            .map(|d| format!("{:+.1} pt", 100.0 * d))
            .unwrap_or_else(|| "—".to_string());
        let dlen = diff(
            &o.eval_response_length_before,
            &o.eval_response_length_after,
        )
        .map(|d| format!("{d:+.1}"))
        .unwrap_or_else(|| "—".to_string());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            o.arm,
            o.n_seeds,
            stat(&o.eval_accuracy_before, true),
            stat(&o.eval_accuracy_after, true),
            dacc,
            stat(&o.eval_response_length_before, false),
            stat(&o.eval_response_length_after, false),
            dlen
        );
    }

    let _ = writeln!(s, "\n### Runs\n");
    let _ = writeln!(
        s,
        "| arm | seed | steps | accuracy before | accuracy after | length before | length after | run |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &cmp.runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | `{}` |",
            r.arm,
            r.seed,
            r.steps,
            pct(r.eval_accuracy_before),
            pct(r.eval_accuracy_after),
            num(r.eval_response_length_before, 1),
            num(r.eval_response_length_after, 1),
            r.run_dir
        );
    }

    let _ = writeln!(s, "\n## Plots\n");
    for p in &cmp.plots {
        let name = p.rsplit('/').next().unwrap_or(p).replace('_', " ");
        let _ = writeln!(s, "![{name}]({p}.png)\n");
    }

    let _ = writeln!(s, "## Length analysis (responses sampled during RL)\n");
    let _ = writeln!(s, "### Per objective (whole run, mean ± std over seeds)\n");
    let _ = writeln!(
        s,
        "| arm | final train length | correct length | incorrect length | A>0 length | A<0 length | truncated |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for o in &cmp.by_objective {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            o.arm,
            stat(&o.final_response_length_mean, false),
            stat(&o.correct_mean_length, false),
            stat(&o.incorrect_mean_length, false),
            stat(&o.positive_advantage_mean_length, false),
            stat(&o.negative_advantage_mean_length, false),
            stat(&o.truncated_frac, true)
        );
    }

    let _ = writeln!(s, "\n### Per-prompt length distribution\n");
    let _ = writeln!(
        s,
        "A group is the responses to one prompt at one step. Mean, std and percentiles are over groups of the \
         group's mean length; within-prompt std is the mean over groups of the std inside the group.\n"
    );
    let _ = writeln!(
        s,
        "| arm | seed | groups | mean | std | p10 | p50 | p90 | within-prompt std | p50 first → last step |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &cmp.runs {
        let la = &r.length_analysis;
        let p = &la.per_prompt;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            r.arm,
            r.seed,
            p.n_groups,
            num(p.mean, 1),
            num(p.std, 1),
            num(p.p10, 1),
            num(p.p50, 1),
            num(p.p90, 1),
            num(p.mean_within_prompt_std, 1),
            num(la.per_prompt_first_step.p50, 1),
            num(la.per_prompt_last_step.p50, 1)
        );
    }

    let _ = writeln!(s, "\n### Length by advantage sign\n");
    let _ = writeln!(
        s,
        "Gap = mean over groups holding both signs of (mean length of A>0 − mean length of A<0): negative means \
         that, within a prompt, the rewarded responses were shorter than the penalised ones. Δ/step = mean step-to-step change of the per-step mean.\n"
    );
    let _ = writeln!(
        s,
        "| arm | seed | A>0 length | A<0 length | gap | Δ/step A>0 | Δ/step A<0 | A>0 first → last | A<0 first → last |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &cmp.runs {
        let la = &r.length_analysis;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.arm,
            r.seed,
            num(la.positive_advantage.mean_length, 1),
            num(la.negative_advantage.mean_length, 1),
            num(la.advantage_length_gap, 1),
            num(la.mean_step_change_positive, 2),
            num(la.mean_step_change_negative, 2),
            first_last(la, |x| x.positive_advantage_mean_length),
            first_last(la, |x| x.negative_advantage_mean_length)
        );
    }

    let _ = writeln!(s, "\n### Correct vs incorrect, truncation\n");
    let _ = writeln!(
        s,
        "| arm | seed | responses | correct | correct length | incorrect | incorrect length | truncated | length first → last step |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &cmp.runs {
        let la = &r.length_analysis;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.arm,
            r.seed,
            la.n_responses,
            la.correct.n,
            num(la.correct.mean_length, 1),
            la.incorrect.n,
            num(la.incorrect.mean_length, 1),
            pct(la.truncated_frac),
            first_last(la, |x| x.mean_length)
        );
    }
    let _ = writeln!(
        s,
        "\n### Per-prompt length statistics (CASTILLO)\n\nOver the responses to each prompt at one RL step, \
         then the mean over that step's prompts; std is the population std, percentiles interpolate linearly \
         (numpy's defaults); a prompt is degenerate when some response hit the length limit (repetition is not \
         checked). Per-prompt values: `compare.json`, `runs[].length_analysis.castillo_first_step` / \
         `castillo_last_step`.\n"
    );
    let _ = writeln!(
        s,
        "| arm | seed | step | prompts | mean | std | min | max | p25 | p50 | p75 | p99 | degenerate |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &cmp.runs {
        let la = &r.length_analysis;
        for c in [&la.castillo_first_step, &la.castillo_last_step] {
            let Some(step) = c.step else { continue };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.arm,
                r.seed,
                step,
                c.n_prompts,
                num(c.mean, 1),
                num(c.std, 1),
                num(c.min, 1),
                num(c.max, 1),
                num(c.p25, 1),
                num(c.p50, 1),
                num(c.p75, 1),
                num(c.p99, 1),
                pct(c.degenerate_frac)
            );
        }
    }
    drivers(&mut s, cmp);
    let _ = writeln!(
        s,
        "\nPer-step figures (lengths of correct/incorrect and A>0/A<0 responses, their changes, truncation) \
         are in `compare.json` under `runs[].length_analysis.by_step`."
    );
    s
}

/// Mean of the finite values of `v` (None when there are none).
fn finite_mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One sentence per objective naming the largest part of its mean length push (docs/length_theory.md).
fn drivers(s: &mut String, cmp: &Comparison) {
    let _ = writeln!(s, "\n### What drove the length\n");
    let _ = writeln!(
        s,
        "Train length over the first and last 5 steps, and the mean over steps and seeds of the first-order \
         length push (tokens; > 0 favours longer responses) split into reward, weighting and clip parts \
         (`train::mechanism`).\n"
    );
    for o in &cmp.by_objective {
        let runs: Vec<_> = cmp.runs.iter().filter(|r| r.arm == o.arm).collect();
        let over = |f: &dyn Fn(&super::Curves) -> Option<f64>| {
            finite_mean(runs.iter().filter_map(|r| f(&r.curves)))
        };
        let window = |c: &super::Curves, last: bool| {
            let v = &c.response_length_mean;
            let k = v.len().min(5);
            finite_mean(
                if last {
                    v[v.len() - k..].iter()
                } else {
                    v[..k].iter()
                }
                .copied(),
            )
        };
        let (first, last) = (over(&|c| window(c, false)), over(&|c| window(c, true)));
        let part =
            |f: fn(&super::Curves) -> &Vec<f64>| over(&|c| finite_mean(f(c).iter().copied()));
        let parts = [
            (
                "the reward (advantage covaried with length)",
                part(|c| &c.len_push_reward),
            ),
            (
                "the objective's length weighting",
                part(|c| &c.len_push_weighting),
            ),
            ("clipping", part(|c| &c.len_push_clip)),
        ];
        let (Some(first), Some(last), Some(total)) = (first, last, part(|c| &c.len_push)) else {
            let _ = writeln!(s, "- **{}**: no mechanism metrics in these runs.", o.arm);
            continue;
        };
        let (name, v) =
            parts
                .iter()
                .filter_map(|(n, v)| Some((*n, (*v)?)))
                .fold(("none", 0.0f64), |acc, x| {
                    if x.1.abs() > acc.1.abs() {
                        x
                    } else {
                        acc
                    }
                });
        let dir = if v > 0.0 { "longer" } else { "shorter" };
        let _ = writeln!(
            s,
            "- **{}**: length {first:.1} → {last:.1} ({:.2}×); mean push {total:+.2}, of which {:+.2} reward, \
             {:+.2} weighting, {:+.2} clip: mostly {name}, towards {dir} responses.",
            o.arm,
            last / first.max(1e-9),
            parts[0].1.unwrap_or(f64::NAN),
            parts[1].1.unwrap_or(f64::NAN),
            parts[2].1.unwrap_or(f64::NAN),
        );
    }
}

/// Escapes text for HTML and turns `code` spans into `<code>`.
fn inline_html(text: &str) -> String {
    let esc = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let mut out = String::new();
    for (i, part) in esc.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Splits a Markdown table row into its cells.
fn cells(row: &str) -> Vec<&str> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// A standalone HTML page with the same content as `render` (headings, paragraphs, tables, images).
pub fn render_html(cmp: &Comparison) -> String {
    let md = render(cmp);
    let mut s = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>luspo comparison</title>\n<style>\
         body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>\n",
    );
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with('|') {
            let head = cells(line);
            let _ = write!(s, "<table><tr>");
            for h in head {
                let _ = write!(s, "<th>{}</th>", inline_html(h));
            }
            let _ = writeln!(s, "</tr>");
            i += 2; // header and separator rows
            while i < lines.len() && lines[i].starts_with('|') {
                let _ = write!(s, "<tr>");
                for c in cells(lines[i]) {
                    let _ = write!(s, "<td>{}</td>", inline_html(c));
                }
                let _ = writeln!(s, "</tr>");
                i += 1;
            }
            let _ = writeln!(s, "</table>");
            continue;
        }
        if let Some(h) = line.strip_prefix("### ") {
            let _ = writeln!(s, "<h3>{}</h3>", inline_html(h));
        } else if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(s, "<h2>{}</h2>", inline_html(h));
        } else if let Some(h) = line.strip_prefix("# ") {
            let _ = writeln!(s, "<h1>{}</h1>", inline_html(h));
        } else if let Some(img) = line.strip_prefix("![") {
            let (alt, rest) = img.split_once("](").unwrap_or((img, ")"));
            let src = rest.trim_end_matches(')');
            let _ = writeln!(
                s,
                "<p><img src=\"{}\" alt=\"{}\"></p>",
                inline_html(src),
                inline_html(alt)
            );
        } else if !line.trim().is_empty() {
            let _ = writeln!(s, "<p>{}</p>", inline_html(line));
        }
        i += 1;
    }
    s.push_str("</body></html>\n");
    s
}
