//! The layering of `src/` (docs/ARCHITECTURE.md, "Module map"), checked on the source text:
//!
//! - a domain module (anything but `app`, `http`, `main`, `sim`) names neither `crate::http`
//!   nor axum's server side (`axum::http`, the HTTP types crate it re-exports, is allowed);
//! - only `config` reads the environment (`std::env::var` and friends; clippy's
//!   `disallowed-methods` in `clippy.toml` says the same to the compiler);
//! - no cycle between top-level modules (`crate::a` → `crate::b` → `crate::a`).
//!
//! Exceptions are listed below with their reasons and may only shrink. Unit tests of the
//! checker itself (bottom) show each rule failing on a deliberately wrong import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules that may speak HTTP server: the router and handlers, the process
/// assembly, and the simulators (which are servers).
const HTTP_SIDE: &[&str] = &["app", "http", "main", "sim"];

/// Files allowed to use axum beyond `axum::http`, and why.
const AXUM_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "media/bridge.rs",
        "the media bridge is driven by the Telnyx WebSocket axum upgraded (axum's WebSocket type)",
    ),
    (
        "media/browser.rs",
        "the browser transcription proxy is driven by the WebSocket axum upgraded",
    ),
];

/// Cycles known today, each exactly as it stands, and why it is not broken yet (none).
const CYCLE_EXCEPTIONS: &[(&[&str], &str)] = &[];

/// One source file: its path under `src/` and its text without comments and test modules.
struct Source {
    path: String,
    text: String,
}

impl Source {
    fn new(path: &str, raw: &str) -> Self {
        Self {
            path: path.to_owned(),
            text: strip(raw),
        }
    }

    /// `calls` for `calls/mod.rs` and `calls/dial.rs`; `inbox` for `inbox.rs`.
    fn top(&self) -> &str {
        let first = self.path.split('/').next().unwrap_or_default();
        first.strip_suffix(".rs").unwrap_or(first)
    }
}

/// Drops comments (`//` to the end of the line, outside strings) and everything from a
/// `#[cfg(test)] mod …` onwards (unit tests sit at the end of a file and may reach anywhere).
fn strip(raw: &str) -> String {
    let tests = raw
        .match_indices("#[cfg(test)]")
        .find(|(at, marker)| raw[at + marker.len()..].trim_start().starts_with("mod "));
    let code = match tests {
        Some((at, _)) => &raw[..at],
        None => raw,
    };
    let mut out = String::with_capacity(code.len());
    for line in code.lines() {
        let mut in_string = false;
        let mut previous = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            if c == '"' && previous != '\\' {
                in_string = !in_string;
            }
            if !in_string && c == '/' && previous == '/' {
                cut = i - 1;
                break;
            }
            previous = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The items of a `{a, b::c, d::{e}}` group at its top level: `a`, `b`, `d`.
fn group_heads(text: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut expecting = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    expecting = true;
                    continue;
                }
            }
            '}' => {
                if depth <= 1 {
                    break;
                }
                depth -= 1;
            }
            ',' if depth == 1 => expecting = true,
            c if depth == 1 && expecting && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident_at(&text[i..]));
                expecting = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules a file names through `crate::`.
fn crate_refs(source: &Source) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (at, _) in source.text.match_indices("crate::") {
        // Not `callbridge_crate::` or the like.
        let before = source.text[..at].chars().next_back().unwrap_or(' ');
        if before.is_ascii_alphanumeric() || before == '_' {
            continue;
        }
        let rest = &source.text[at + "crate::".len()..];
        if rest.starts_with('{') {
            refs.extend(group_heads(rest).into_iter().map(str::to_owned));
        } else {
            refs.insert(ident_at(rest).to_owned());
        }
    }
    refs.remove(source.top());
    refs.retain(|r| !r.is_empty() && r != "self");
    refs
}

/// What follows each `axum::` (or the heads of `axum::{…}`).
fn axum_paths(source: &Source) -> Vec<String> {
    let mut paths = Vec::new();
    for (at, _) in source.text.match_indices("axum::") {
        let before = source.text[..at].chars().next_back().unwrap_or(' ');
        if before.is_ascii_alphanumeric() || before == '_' {
            continue;
        }
        let rest = &source.text[at + "axum::".len()..];
        if rest.starts_with('{') {
            paths.extend(group_heads(rest).into_iter().map(str::to_owned));
        } else {
            paths.push(ident_at(rest).to_owned());
        }
    }
    paths
}

const ENV_READS: &[&str] = &[
    "env::var(",
    "env::var_os(",
    "env::vars(",
    "env::vars_os(",
    "env::set_var(",
    "env::remove_var(",
];

/// Every rule broken by `sources`, one line each.
fn violations(sources: &[Source]) -> Vec<String> {
    let mut found = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let top = source.top().to_owned();
        let refs = crate_refs(source);
        if !HTTP_SIDE.contains(&top.as_str()) {
            if refs.contains("http") {
                found.push(format!(
                    "{}: a domain module names crate::http",
                    source.path
                ));
            }
            let excepted = AXUM_EXCEPTIONS.iter().any(|(path, _)| *path == source.path);
            for path in axum_paths(source) {
                if path != "http" && !excepted {
                    found.push(format!(
                        "{}: a domain module uses axum::{path} (only axum::http is allowed)",
                        source.path
                    ));
                }
            }
        }
        if top != "config" {
            for read in ENV_READS {
                if source.text.contains(read) {
                    found.push(format!(
                        "{}: reads the environment ({read}…); only config may",
                        source.path
                    ));
                }
            }
        }
        if top != "lib" && top != "main" {
            graph
                .entry(top)
                .or_default()
                .extend(refs.into_iter().filter(|r| r != "lib" && r != "main"));
        }
    }
    for cycle in cycles(&graph) {
        let allowed = CYCLE_EXCEPTIONS.iter().any(|(members, _)| {
            members
                .iter()
                .map(|m| m.to_string())
                .collect::<BTreeSet<_>>()
                == cycle
        });
        if !allowed {
            let names: Vec<_> = cycle.into_iter().collect();
            found.push(format!(
                "a cycle between top-level modules: {}",
                names.join(" <-> ")
            ));
        }
    }
    found
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            self.index.insert(node, self.next);
            self.low.insert(node, self.next);
            self.next += 1;
            self.stack.push(node);
            self.on_stack.insert(node);
            let graph = self.graph;
            for next in graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !graph.contains_key(next) {
                    continue;
                }
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = BTreeSet::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.insert(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found
}

fn read_tree(root: &Path, dir: &Path, sources: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(root, &path, sources);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(root)
                .expect("under src/")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            sources.push(Source::new(&relative, &text));
        }
    }
}

#[test]
fn the_source_tree_keeps_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    read_tree(&root, &root, &mut sources);
    assert!(sources.len() > 50, "found only {} files", sources.len());
    let found = violations(&sources);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn the_checker_fails_on_a_domain_module_importing_http_or_axum() {
    let sources = [
        Source::new(
            "calls/dial.rs",
            "use crate::http::error::ApiError;\nuse axum::extract::State;\nuse axum::http::HeaderMap;\n",
        ),
        Source::new(
            "http/calls.rs",
            "use crate::calls::dial;\nuse axum::Router;\n",
        ),
    ];
    assert_eq!(
        violations(&sources),
        vec![
            "calls/dial.rs: a domain module names crate::http".to_owned(),
            "calls/dial.rs: a domain module uses axum::extract (only axum::http is allowed)"
                .to_owned(),
            "a cycle between top-level modules: calls <-> http".to_owned(),
        ]
    );
    // Grouped imports count too; comments and unit tests do not.
    let grouped = [Source::new(
        "jobs/x.rs",
        "use crate::{db, http::error};\n// use axum::Router;\n#[cfg(test)]\nmod tests { use axum::Json; }\n",
    )];
    assert_eq!(
        violations(&grouped),
        vec!["jobs/x.rs: a domain module names crate::http".to_owned()]
    );
}

#[test]
fn the_checker_fails_on_an_environment_read_outside_config() {
    let sources = [
        Source::new("jobs/mod.rs", "let host = std::env::var(\"HOSTNAME\");\n"),
        Source::new("config/mod.rs", "let all = std::env::vars();\n"),
        Source::new("main.rs", "let args = std::env::args();\n"),
    ];
    assert_eq!(
        violations(&sources),
        vec!["jobs/mod.rs: reads the environment (env::var(…); only config may".to_owned()]
    );
}

#[test]
fn the_checker_fails_on_a_cycle_but_not_on_a_chain() {
    let chain = [
        Source::new("http/mod.rs", "use crate::calls;"),
        Source::new("calls/mod.rs", "use crate::db::Db;"),
        Source::new("db/mod.rs", "use crate::config;"),
    ];
    assert_eq!(violations(&chain), Vec::<String>::new());
    let cycle = [
        Source::new("calls/mod.rs", "use crate::jobs;"),
        Source::new("jobs/mod.rs", "use crate::queue::Job;"),
        Source::new("queue/mod.rs", "fn f() { crate::calls::get(); }"),
    ];
    assert_eq!(
        violations(&cycle),
        vec!["a cycle between top-level modules: calls <-> jobs <-> queue".to_owned()]
    );
}
