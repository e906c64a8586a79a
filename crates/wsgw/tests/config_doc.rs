//! docs/configuration.md is the configuration reference; this test keeps it true. It reads the
//! doc's settings tables (`| TOML key | env var | flag | default | meaning |`) and checks them
//! against the settings table in `src/config/settings.rs` ([`SETTINGS`]), the real defaults
//! ([`Config::default`]) and the real flags ([`Cli`]):
//!
//! - every setting has exactly one row, with its env var, its flag (or none) and a default
//!   cell that starts with the real default;
//! - every row is a setting;
//! - every `WSGW_*` variable named anywhere in the doc exists.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use wsgw::config::{CONFIG_ENV, Cli, Config, REDIS_CLUSTER_ENV, SETTINGS};

const DOC: &str = include_str!("../../../docs/configuration.md");
const HEADER: [&str; 5] = ["TOML key", "env var", "flag", "default", "meaning"];

/// One row of a settings table.
struct Row {
    line: usize,
    env: String,
    flag: String,
    default: String,
}

fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// The rows of every table whose header is [`HEADER`], by TOML key (backticks removed);
/// a key listed twice is reported in `problems`.
fn doc_rows(problems: &mut Vec<String>) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for (i, line) in DOC.lines().enumerate() {
        let line_no = i + 1;
        if !line.trim_start().starts_with('|') {
            in_table = false;
            continue;
        }
        let cells = cells(line);
        if cells == HEADER {
            in_table = true;
            continue;
        }
        if !in_table
            || cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':' || ch == ' '))
        {
            continue;
        }
        if cells.len() != HEADER.len() {
            problems.push(format!(
                "line {line_no}: a settings row needs {} cells: {line}",
                HEADER.len()
            ));
            continue;
        }
        let key = cells[0].trim_matches('`').to_owned();
        let row = Row {
            line: line_no,
            env: cells[1].to_owned(),
            flag: cells[2].to_owned(),
            default: cells[3].to_owned(),
        };
        if let Some(before) = rows.insert(key.clone(), row) {
            problems.push(format!(
                "line {line_no}: `{key}` is listed again (first on line {})",
                before.line
            ));
        }
    }
    rows
}

/// How the doc's default column must begin for each key: `` `value` ``, `empty` for an
/// empty string or list, `unset` for an absent optional value.
fn default_cells() -> BTreeMap<&'static str, String> {
    let defaults = toml::Value::try_from(Config::default()).expect("the defaults serialize");
    SETTINGS
        .iter()
        .map(|s| {
            let cell = match defaults.get(s.key) {
                None => "unset".to_owned(),
                Some(toml::Value::String(v)) if v.is_empty() => "empty".to_owned(),
                Some(toml::Value::String(v)) => format!("`{v}`"),
                Some(toml::Value::Array(v)) if v.is_empty() => "empty".to_owned(),
                Some(other) => format!("`{other}`"),
            };
            (s.key, cell)
        })
        .collect()
}

/// The flag of each setting that has one, as the doc writes it: `` `--listen` ``.
fn flag_cells() -> BTreeMap<String, String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| Some((a.get_id().as_str().to_owned(), format!("`--{}`", a.get_long()?))))
        .collect()
}

/// Every `WSGW_<NAME>` in the text.
fn env_vars_named(text: &str) -> BTreeSet<&str> {
    let mut found = BTreeSet::new();
    for (start, _) in text.match_indices("WSGW_") {
        let len = text[start + 5..]
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(text.len() - start - 5);
        if len > 0 {
            found.insert(text[start..start + 5 + len].trim_end_matches('_'));
        }
    }
    found
}

#[test]
fn the_configuration_doc_lists_every_setting_with_its_env_var_flag_and_default() {
    let mut problems = Vec::new();
    let mut rows = doc_rows(&mut problems);
    let defaults = default_cells();
    let flags = flag_cells();
    for s in SETTINGS {
        let Some(row) = rows.remove(s.key) else {
            problems.push(format!("`{}` ({}) has no row in a settings table", s.key, s.env));
            continue;
        };
        let line = row.line;
        let env = format!("`{}`", s.env);
        if row.env != env {
            problems.push(format!(
                "line {line}: `{}`: env var is {env}, the doc says {:?}",
                s.key, row.env
            ));
        }
        let flag = flags.get(s.key).cloned().unwrap_or_default();
        if row.flag != flag {
            problems.push(format!(
                "line {line}: `{}`: flag is {flag:?}, the doc says {:?}",
                s.key, row.flag
            ));
        }
        let default = &defaults[s.key];
        if !row.default.starts_with(default.as_str()) {
            problems.push(format!(
                "line {line}: `{}`: default is {default}, the doc says {:?}",
                s.key, row.default
            ));
        }
    }
    for (key, row) in rows {
        problems.push(format!("line {}: `{key}` is not a setting", row.line));
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md disagrees with the settings:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_configuration_doc_names_no_env_var_that_does_not_exist() {
    // Besides the settings: the config file's path, and the seeds `wsgw functions` reads.
    let known: BTreeSet<&str> = SETTINGS
        .iter()
        .map(|s| s.env)
        .chain([CONFIG_ENV, REDIS_CLUSTER_ENV])
        .collect();
    let unknown: Vec<&str> = env_vars_named(DOC).difference(&known).copied().collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md names env vars that do not exist: {unknown:?}"
    );
}

#[test]
fn the_doc_checks_see_what_they_check() {
    // Guards the parsing above: an empty table or an empty scan would pass vacuously.
    let mut problems = Vec::new();
    assert_eq!(doc_rows(&mut problems).len(), SETTINGS.len());
    assert!(env_vars_named(DOC).contains(CONFIG_ENV));
    assert_eq!(
        env_vars_named("`WSGW_*`, WSGW_A_B1=x and WSGW_C."),
        BTreeSet::from(["WSGW_A_B1", "WSGW_C"])
    );
    assert_eq!(default_cells()["listen"], "`0.0.0.0:8080`");
    assert_eq!(default_cells()["jwt_secret"], "unset");
    assert_eq!(flag_cells()["max_connections"], "`--max-connections`");
}
