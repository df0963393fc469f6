//! docs/config.md lists every configuration key with its real default: the `[objective]` table is exactly the one
//! the knob declaration generates, and every key of every other section appears in its section's table with the
//! built-in default (`RunConfig::default()`).

use luspo::objective::knob_table;
use luspo::train::config::RunConfig;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap()
}

#[test]
fn objective_table_is_generated_from_the_knob_declaration() {
    let table = knob_table();
    assert!(
        doc().contains(&table),
        "docs/config.md's [objective] table differs from the declaration; it should be:\n{table}"
    );
}

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// (keys, defaults) of every table row under the `## ...` heading that names `section`.
fn rows_of(doc: &str, section: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let heading = if section.is_empty() {
        "## Top level".to_string()
    } else {
        format!("## `[{section}]`")
    };
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/config.md has no heading {heading}"));
    let body = &doc[start + heading.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            (ticked(cells[1]), ticked(cells[2]))
        })
        .collect()
}

fn same_value(doc_value: &str, real: &toml::Value) -> bool {
    match toml::from_str::<toml::Table>(&format!("v = {doc_value}")) {
        Ok(t) => {
            &t["v"] == real
                || t["v"]
                    .as_float()
                    .zip(real.as_float())
                    .is_some_and(|(a, b)| a == b)
                || t["v"].as_integer().map(|i| i as f64) == real.as_float()
        }
        Err(_) => false,
    }
}

#[test]
fn every_key_is_documented_with_its_default() {
    let doc = doc();
    let defaults = toml::Value::try_from(RunConfig::default()).unwrap();
    let mut checked = 0;
    for (section, value) in defaults.as_table().unwrap() {
        let (name, table) = match value.as_table() {
            Some(t) => (section.as_str(), t.clone()),
            None => {
                let mut t = toml::Table::new();
                t.insert(section.clone(), value.clone());
                ("", t)
            }
        };
        if name == "objective" {
            continue; // generated table, checked above
        }
        let rows = rows_of(&doc, name);
        // A sub-table (e.g. `[control.dler]`) is documented key by key as `dler.l_trunc`; an empty one (a method
        // without parameters, e.g. `ttrl`) has no keys.
        let mut flat: Vec<(String, toml::Value)> = vec![];
        for (key, real) in &table {
            match real.as_table() {
                Some(sub) => {
                    flat.extend(sub.iter().map(|(k, v)| (format!("{key}.{k}"), v.clone())))
                }
                _ => flat.push((key.clone(), real.clone())),
            }
        }
        for (key, real) in &flat {
            let (keys, docs) = rows
                .iter()
                .find(|(ks, _)| ks.contains(key))
                .unwrap_or_else(|| panic!("docs/config.md [{name}]: no row for `{key}`"));
            // A row may document several keys: `a` / `b` with defaults `1` / `2`, or one default for all.
            let i = keys.iter().position(|k| k == key).unwrap();
            let d = if docs.len() == keys.len() {
                &docs[i]
            } else {
                &docs[0]
            };
            assert!(
                same_value(d, real),
                "docs/config.md [{name}] `{key}`: documented default `{d}`, real default {real}"
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} keys checked");
}
