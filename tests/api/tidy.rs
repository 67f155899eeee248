//! ARCHITECTURE.md's invariants, read off the source tree (in the style of rust-analyzer's
//! tidy tests): each test fails naming the file and line that breaks its rule. Comments and the
//! `#[cfg(test)] mod tests` at the end of a file are not looked at.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every `.rs` file under `src/`, relative to the package root, with its code lines (number,
/// text): comments and the trailing test module left out.
fn sources() -> Vec<(String, Vec<(usize, String)>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    rust_files(&root.join("src"))
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            let lines = code
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .map(|(i, line)| (i + 1, line.to_owned()))
                .collect();
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, lines)
        })
        .collect()
}

/// The lines that `matches` in files outside `allowed` (path prefixes), as `file:line: text`.
fn offenders(allowed: &[&str], matches: impl Fn(&str) -> bool) -> Vec<String> {
    offenders_in(
        |file| !allowed.iter().any(|prefix| file.starts_with(prefix)),
        matches,
    )
}

/// The lines that `matches` in the files `in_scope` accepts.
fn offenders_in(in_scope: impl Fn(&str) -> bool, matches: impl Fn(&str) -> bool) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|(file, _)| in_scope(file))
        .flat_map(|(file, lines)| {
            lines
                .into_iter()
                .filter(|(_, line)| matches(line))
                .map(move |(n, line)| format!("{file}:{n}: {}", line.trim()))
        })
        .collect()
}

#[test]
fn only_the_store_issues_sql() {
    const CALLS: &[&str] = &[
        ".query(&",
        ".query(\"",
        ".query_one(",
        ".query_opt(",
        ".query_raw(",
        ".query_typed(",
        ".execute(",
        ".batch_execute(",
        ".simple_query(",
        ".prepare(",
        ".prepare_typed(",
        ".copy_in(",
        ".transaction(",
    ];
    const STATEMENTS: &[&str] = &[
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
        "\"CREATE ",
        "\"ALTER ",
        "\"DROP ",
        "\"SET ",
        "\"WITH ",
        "\"BEGIN",
        "\"COPY ",
    ];
    // (The tools, another package under tools/, seed rows and run the incumbent's statements
    // as the bench's baselines.)
    let found = offenders(&["src/store/"], |line| {
        CALLS.iter().any(|c| line.contains(c)) || STATEMENTS.iter().any(|s| line.contains(s))
    });
    assert!(
        found.is_empty(),
        "SQL outside src/store/:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_grpc_module_names_tonic_or_prost() {
    let names = |line: &str| {
        [
            "tonic::",
            "tonic_",
            "prost::",
            "prost_types::",
            "use tonic",
            "use prost",
        ]
        .iter()
        .any(|name| {
            line.match_indices(name).any(|(at, _)| {
                // A whole path segment, not the end of another word (`with_tonic()`).
                !line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            })
        })
    };
    // app.rs wires the server, client.rs is the client.
    let found = offenders(&["src/grpc/", "src/app.rs", "src/client.rs"], names);
    assert!(
        found.is_empty(),
        "tonic/prost outside src/grpc/:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_session_token_is_exposed_only_by_the_two_success_responses() {
    let found = offenders(&[], |line| line.contains(".expose()"));
    let places: Vec<&str> = found
        .iter()
        .map(|f| f.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        places,
        ["src/grpc/mod.rs", "src/http/agent.rs"],
        "SessionToken::expose() calls:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_verifiers_do_no_io() {
    const IO: &[&str] = &[
        "std::fs",
        "tokio::fs",
        "std::net",
        "tokio::net",
        "std::env",
        "crate::fetch",
        "crate::store",
        "hyper",
        "tokio_postgres",
        "::now(",
        "now_utc(",
        "File::",
    ];
    let found = offenders_in(
        |file| file.starts_with("src/identity/"),
        |line| IO.iter().any(|io| line.contains(io)),
    );
    assert!(
        found.is_empty(),
        "I/O in the verifiers (src/identity/):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_cancel_request_is_ever_sent_to_postgresql() {
    // A cancel request cancels whatever that backend runs now, which may be another caller's
    // statement (ARCHITECTURE.md; behaviour: contract::abandoned_logins_keep_their_connections…).
    let found = offenders(&[], |line| {
        line.contains("cancel_token") || line.contains("cancel_query")
    });
    assert!(found.is_empty(), "cancel requests:\n{}", found.join("\n"));
}

#[test]
fn only_tests_open_the_embedded_cluster_to_tcp() {
    let found = offenders(&["src/embedded.rs"], |line| {
        line.contains("loopback_tcp") || line.contains("listen_addresses")
    });
    assert!(
        found.is_empty(),
        "TCP for the embedded cluster:\n{}",
        found.join("\n")
    );
}

#[test]
fn unsafe_code_is_only_the_prctl_call_of_the_embedded_cluster() {
    let found = offenders(&["src/embedded.rs"], |line| {
        line.contains("unsafe ") || line.contains("unsafe_code")
    });
    assert!(found.is_empty(), "unsafe:\n{}", found.join("\n"));
}

/// The tools are another package (`tools/`) that depends on this one; the server package has
/// neither it nor a dependency only the tools use among its own (a dev-dependency for the
/// tests' test bed is all), so the compiler keeps tool code out of the server binary. CI also
/// checks the whole build graph (`cargo tree -p agent-auth`).
#[test]
fn the_server_package_depends_on_no_tool() {
    let read = |path: &str| -> toml::Table {
        let text =
            std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        text.parse().unwrap()
    };
    let server = read("Cargo.toml");
    let tools = read("tools/Cargo.toml");
    let tool_only = ["agent-auth-tools", "deadpool-postgres", "indicatif"];
    for section in ["dependencies", "build-dependencies"] {
        let names = server[section].as_table().unwrap();
        for name in tool_only {
            assert!(
                !names.contains_key(name),
                "{name} in the server's [{section}]"
            );
        }
    }
    assert!(
        server["dev-dependencies"]
            .as_table()
            .unwrap()
            .contains_key("agent-auth-tools")
    );
    assert!(
        tools["dependencies"]
            .as_table()
            .unwrap()
            .contains_key("agent-auth")
    );
    assert!(
        !server["features"].as_table().unwrap().contains_key("tools"),
        "the tools are no feature of the server"
    );
}

/// Every key and certificate the tests use comes from `tests/api/pki.rs`: no other test file
/// generates one.
#[test]
fn only_the_test_pki_generates_keys() {
    const GENERATORS: &[&str] = &[
        "Rsa::generate",
        "PKey::generate",
        "EcKey::generate",
        "X509Builder::new",
        "X509::builder",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for path in rust_files(&root.join("tests")) {
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name == "tests/api/pki.rs" || name == "tests/api/tidy.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            if GENERATORS.iter().any(|g| line.contains(g)) {
                found.push(format!("{name}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "keys made outside the test PKI:\n{}",
        found.join("\n")
    );
}

/// The modules from the bottom up (ARCHITECTURE.md's layers): a module uses only modules of
/// its own layer or below, so the dependency graph has no cycle and the verifiers, the table of
/// reasons and the metrics never depend on the use case or a transport.
const LAYERS: &[&[&str]] = &[
    &["reasons", "identity", "fetch", "recent", "report"],
    &["metrics", "issuers"],
    &["store", "cloud", "listen", "limit"],
    &["config", "embedded"],
    &["cli", "telemetry"],
    &["trust"],
    &["auth"],
    &["grpc"],
    &["http", "client"],
    &["app", "fuzz"],
    &["commands"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `src/store/tls.rs` → `store`; `src/app.rs` → `app`.
fn module_of(file: &str) -> &str {
    let rest = file.trim_start_matches("src/");
    rest.split(['/', '.']).next().unwrap_or(rest)
}

#[test]
fn no_module_uses_one_above_its_layer() {
    let mut found = Vec::new();
    let mut unplaced = Vec::new();
    for (file, lines) in sources() {
        let module = module_of(&file);
        if matches!(module, "lib" | "main") {
            continue;
        }
        let Some(own) = layer_of(module) else {
            unplaced.push(file.clone());
            continue;
        };
        for (n, line) in lines {
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if let Some(layer) = layer_of(&used)
                    && layer > own
                {
                    found.push(format!("{file}:{n}: {module} uses {used}: {}", line.trim()));
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS: {unplaced:?}"
    );
    assert!(found.is_empty(), "upward uses:\n{}", found.join("\n"));
}

/// `src/store/pipeline.rs` → `store::pipeline`; `src/store/mod.rs` → `store`; `src/app.rs` →
/// `app`.
fn module_path(file: &str) -> String {
    let rest = file.trim_start_matches("src/").trim_end_matches(".rs");
    rest.trim_end_matches("/mod").replace('/', "::")
}

/// The module a path used in `from` names: `crate::a::b::Item` or `super::b::Item`, resolved to
/// the longest prefix that is a module of the tree.
fn used_module(
    from: &str,
    path: &str,
    modules: &std::collections::BTreeSet<String>,
) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    let mut rest = path;
    if let Some(after) = rest.strip_prefix("crate::") {
        rest = after;
    } else {
        let mut base: Vec<&str> = from.split("::").collect();
        while let Some(after) = rest.strip_prefix("super::") {
            base.pop();
            rest = after;
        }
        segments.extend(base);
    }
    segments.extend(rest.split("::").take_while(|s| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }));
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

/// A module and one above or below it (a parent declares its children, and children use the
/// parent's items) are not a cycle; siblings that use each other are.
fn related(a: &str, b: &str) -> bool {
    a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

#[test]
fn no_two_modules_use_each_other() {
    let sources = sources();
    let modules: std::collections::BTreeSet<String> =
        sources.iter().map(|(file, _)| module_path(file)).collect();
    let mut uses: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (file, lines) in &sources {
        let from = module_path(file);
        for (_, line) in lines {
            let code = line.split("//").next().unwrap_or_default();
            for start in ["crate::", "super::"] {
                for (at, _) in code.match_indices(start) {
                    // `super::super::x` is read once, from its first `super::`.
                    if start == "super::" && code[..at].ends_with("super::") {
                        continue;
                    }
                    let path: String = code[at..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    // `use super::{a, b::C}` (on one line): each name in the braces.
                    let grouped = code[at + path.len()..]
                        .strip_prefix('{')
                        .and_then(|rest| rest.split('}').next())
                        .map(|names| {
                            names
                                .split(',')
                                .map(|n| format!("{path}{}", n.trim()))
                                .collect()
                        })
                        .unwrap_or_else(|| vec![path.clone()]);
                    for path in grouped {
                        if let Some(to) = used_module(&from, &path, &modules)
                            && to != from
                            && !related(&from, &to)
                        {
                            uses.entry(from.clone()).or_default().insert(to);
                        }
                    }
                }
            }
        }
    }
    // A cycle: a module that reaches itself through the others.
    let mut cycles = Vec::new();
    for start in uses.keys() {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(trail) = stack.pop() {
            let Some(last) = trail.last() else { continue };
            for next in uses.get(last).into_iter().flatten() {
                if next == start {
                    cycles.push(format!("{} -> {start}", trail.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that use each other:\n{}",
        cycles.join("\n")
    );
}

/// Every test ARCHITECTURE.md names as an invariant's enforcer exists (`area::name` for
/// `tests/api/area.rs`, a module path for a unit test; `area::*` for a whole file).
#[test]
fn every_test_architecture_md_cites_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let mut cited = 0;
    for token in doc.split('`').skip(1).step_by(2) {
        let segments: Vec<&str> = token.split("::").collect();
        let last = segments[segments.len() - 1];
        // `area::some_test`, `module::tests::some_test`, `area::*`; code paths like
        // `listen::incoming` pass too, since the function exists in that module.
        let is_path = segments.len() >= 2
            && token
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_:*".contains(c));
        if !is_path {
            continue;
        }
        let found = if last == "*" {
            root.join(format!("tests/api/{}.rs", segments[0])).is_file()
        } else {
            cited_files(root, &segments).iter().any(|file| {
                std::fs::read_to_string(file)
                    .is_ok_and(|code| code.contains(&format!("fn {last}(")))
            })
        };
        if last.contains('_') || last == "*" {
            cited += 1;
            if !found {
                missing.push(token.to_owned());
            }
        }
    }
    assert!(cited > 20, "only {cited} tests cited");
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md cites tests that are not where it says: {missing:?}"
    );
}

/// The files a citation `a::b::…::name` names: the integration-test module `tests/api/a.rs`,
/// and the library module `src/a/b….rs` (or `…/mod.rs`), without a `tests` segment.
fn cited_files(root: &Path, segments: &[&str]) -> Vec<PathBuf> {
    let modules: Vec<&str> = segments[..segments.len() - 1]
        .iter()
        .copied()
        .filter(|s| *s != "tests")
        .collect();
    let mut files = vec![root.join(format!("tests/api/{}.rs", segments[0]))];
    if !modules.is_empty() {
        let path = modules.join("/");
        files.push(root.join(format!("src/{path}.rs")));
        files.push(root.join(format!("src/{path}/mod.rs")));
    }
    files
}
