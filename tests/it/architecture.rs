//! The shape of `src/`, checked: the layer of every top-level module is the table below
//! (`LAYERS`, the one place it is written), and imports point down it; only `store` touches
//! sled, only `kubernetes` the Kubernetes API, only the edge tonic, only `grpc/status.rs`
//! builds gRPC statuses, and the domain never uses tokio; no cycle between top-level modules
//! and no new one between files; no file over 800 lines; every file says what it is for. Files
//! are read whole up to their test module, imports from paths and `use` groups, not substrings.

use std::path::Path;

/// A layer of `src/`, lowest first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layer {
    /// Synchronous, no I/O but reading CA files, no tokio, tonic, sled or kube.
    Domain,
    /// The issuance pipeline: runs a request through the domain and the ports it defines.
    Pipeline,
    /// Behind the domain's ports: authenticators, the store, the Kubernetes API, configuration.
    Adapter,
    /// gRPC, the server's lifecycle, the CLI and clients. May import anything.
    Edge,
}
use Layer::{Adapter, Domain, Edge, Pipeline};

/// Every top-level module of `src/`, its layer, and what it may import beyond the domain: the
/// one statement of the layering (docs/architecture.md draws it). Below the edge a module
/// imports the domain and the modules named here; the edge imports anything. A top-level module
/// missing from this table fails the test, so a new module gets a place on purpose.
const LAYERS: &[(&str, Layer, &[&str])] = &[
    ("audit", Domain, &[]),
    ("caller", Domain, &[]),
    ("clock", Domain, &[]),
    ("csr", Domain, &[]),
    ("digest", Domain, &[]),
    ("federation", Domain, &[]),
    ("identity", Domain, &[]),
    ("keys", Domain, &[]),
    ("metrics", Domain, &[]),
    ("policy", Domain, &[]),
    ("ratelimit", Domain, &[]),
    ("record", Domain, &[]),
    ("revocation", Domain, &[]),
    ("signer", Domain, &[]),
    ("ui", Domain, &[]),
    // The pipeline runs the authenticators (their chain and the impersonation check).
    ("issuance", Pipeline, &["authn"]),
    ("authn", Adapter, &[]),
    // The Kubernetes API implements authn's cluster API (TokenReview).
    ("kubernetes", Adapter, &["authn"]),
    ("store", Adapter, &[]),
    ("config", Adapter, &[]),
    ("export", Adapter, &[]),
    ("bundle_client", Edge, &[]),
    ("cli", Edge, &[]),
    ("client", Edge, &[]),
    ("grpc", Edge, &[]),
    ("loadgen", Edge, &[]),
    ("members", Edge, &[]),
    ("monitoring", Edge, &[]),
    ("server", Edge, &[]),
];

/// The files of `src/` outside any top-level module.
const CRATE_ROOTS: &[&str] = &["lib.rs", "main.rs"];

/// No file in `src/` is longer (generated code is in `OUT_DIR`, not here).
const MAX_FILE_LINES: usize = 800;

fn layer_of(module: &str) -> Option<Layer> {
    LAYERS
        .iter()
        .find(|(name, _, _)| *name == module)
        .map(|(_, layer, _)| *layer)
}

/// The top-level modules of a layer.
fn modules_in(layer: Layer) -> impl Iterator<Item = &'static str> {
    LAYERS
        .iter()
        .filter(move |(_, l, _)| *l == layer)
        .map(|(name, _, _)| *name)
}

/// The files and directories (ending in `/`) of a layer, for the checks by path.
fn paths_in(layer: Layer) -> Vec<String> {
    let mut paths: Vec<String> = modules_in(layer)
        .flat_map(|m| [format!("{m}.rs"), format!("{m}/")])
        .collect();
    if layer == Edge {
        paths.extend(CRATE_ROOTS.iter().map(|r| (*r).to_owned()));
    }
    paths
}

/// The modules `from` may import, or None for the edge (anything).
fn allowed_imports(from: &str) -> Option<Vec<&'static str>> {
    let Some((_, layer, beyond)) = LAYERS.iter().find(|(name, _, _)| *name == from) else {
        panic!("top-level module {from} has no place in the architecture table");
    };
    if *layer == Edge {
        return None;
    }
    Some(modules_in(Domain).chain(beyond.iter().copied()).collect())
}

/// The imports that break the table, as `from -> to`.
fn violations(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (from, targets) in graph {
        let Some(allowed) = allowed_imports(from) else {
            continue;
        };
        for to in targets {
            if !allowed.contains(&to.as_str()) {
                found.push(format!("{from} -> {to}"));
            }
        }
    }
    found
}

#[test]
fn imports_point_one_way() {
    let graph = module_imports();
    assert!(
        graph["signer"].contains("policy"),
        "the import graph is read"
    );
    let found = violations(&graph);
    assert!(
        found.is_empty(),
        "imports against the direction of the layers: {}",
        found.join(", ")
    );
}

#[test]
fn the_direction_check_names_a_wrong_way_import() {
    let graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = [
        ("policy", vec!["identity", "authn"]),
        ("store", vec!["audit", "grpc"]),
        ("issuance", vec!["authn", "signer"]),
        ("grpc", vec!["issuance", "store"]),
    ]
    .into_iter()
    .map(|(from, to)| (from.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(violations(&graph), ["policy -> authn", "store -> grpc"]);
}

#[test]
fn the_domain_never_uses_tokio() {
    let domain = paths_in(Domain);
    for (name, text) in sources() {
        let in_domain = domain
            .iter()
            .any(|d| name == *d || (d.ends_with('/') && name.starts_with(d.as_str())));
        if in_domain {
            assert!(
                !code_lines(without_tests(&name, &text)).any(|l| l.contains("tokio")),
                "{name} (domain) uses tokio"
            );
        }
    }
}

/// Every source file, by its path under `src/` (e.g. `store/index.rs`).
fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
                files.push((name, text));
            }
        }
    }
    assert!(files.len() > 10, "found the sources");
    files
}

/// A file's code outside its test module: cut at the `#[cfg(test)]` that opens a `mod` (not at
/// one on a single item, which would hide the rest of the file); nothing of a file that is a
/// test module itself (`tests.rs`, `tests/…`).
fn without_tests<'a>(name: &str, text: &'a str) -> &'a str {
    if name
        .split('/')
        .any(|part| part == "tests" || part == "tests.rs")
    {
        return "";
    }
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]") {
        let at = from + at;
        let after = text[at + "#[cfg(test)]".len()..].trim_start();
        if after.starts_with("mod ") || after.starts_with("pub mod ") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

#[test]
fn the_test_module_cut_reads_past_a_test_only_item() {
    let text = "use a;\n#[cfg(test)]\npub use b;\nuse crate::c;\n#[cfg(test)]\nmod tests {\n use crate::d;\n}\n";
    let code = without_tests("store/mod.rs", text);
    assert!(
        code.contains("crate::c") && !code.contains("crate::d"),
        "{code}"
    );
    assert_eq!(without_tests("store/tests/log.rs", text), "");
    assert_eq!(without_tests("config/tests.rs", text), "");
}

/// Files over [`MAX_FILE_LINES`], as `file: lines`.
fn too_long(files: &[(String, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, text)| text.lines().count() > MAX_FILE_LINES)
        .map(|(name, text)| format!("{name}: {}", text.lines().count()))
        .collect()
}

#[test]
fn no_file_is_over_800_lines() {
    let found = too_long(&sources());
    assert!(
        found.is_empty(),
        "files over {MAX_FILE_LINES} lines (split them by job): {}",
        found.join(", ")
    );
}

/// Files that do not open with a `//!` module doc.
fn undocumented(files: &[(String, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn every_module_says_what_it_is_for() {
    let found = undocumented(&sources());
    assert!(
        found.is_empty(),
        "files without a //! module doc: {}",
        found.join(", ")
    );
}

#[test]
fn the_size_and_doc_checks_name_the_offending_file() {
    let files = vec![
        (
            "ok.rs".to_owned(),
            "//! Does one job.\nfn f() {}\n".to_owned(),
        ),
        (
            "long.rs".to_owned(),
            format!("//! Long.\n{}", "x\n".repeat(MAX_FILE_LINES)),
        ),
        ("bare.rs".to_owned(), "use a;\n//! too late\n".to_owned()),
    ];
    assert_eq!(
        too_long(&files),
        [format!("long.rs: {}", MAX_FILE_LINES + 1)]
    );
    assert_eq!(undocumented(&files), ["bare.rs"]);
}

#[test]
fn every_top_level_module_has_a_layer() {
    let files = sources();
    for (name, _) in &files {
        let top = name.split('/').next().unwrap_or(name);
        if CRATE_ROOTS.contains(&top) {
            continue;
        }
        let module = top.trim_end_matches(".rs");
        assert!(
            layer_of(module).is_some(),
            "{module} has no place in the architecture table"
        );
    }
    for (module, _, _) in LAYERS {
        assert!(
            files.iter().any(|(name, _)| name == &format!("{module}.rs")
                || name.starts_with(&format!("{module}/"))),
            "{module} is in the table but not in src/"
        );
    }
}

/// A module path inside the crate (`["store", "index"]`), from a file's path under `src/`.
fn module_path(name: &str) -> Vec<String> {
    let mut parts: Vec<String> = name
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts
        .last()
        .is_some_and(|last| ["mod", "lib", "main"].contains(&last.as_str()))
    {
        parts.pop();
    }
    parts
}

/// The files each file names, below the top-level module: `crate::a::b…`, `super::…` and
/// `self::…` paths (groups too), `use super::*` (the parent), and a child module's items
/// (`child::…`). Test modules are left out.
fn file_imports(
    files: &[(String, String)],
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let by_module: std::collections::BTreeMap<Vec<String>, &str> = files
        .iter()
        .filter(|(name, text)| !without_tests(name, text).is_empty() || text.is_empty())
        .map(|(name, _)| (module_path(name), name.as_str()))
        .collect();
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .find_map(|n| by_module.get(&path[..n]).copied())
    };
    let mut graph = std::collections::BTreeMap::new();
    for (name, text) in files {
        let code = without_tests(name, text);
        if code.is_empty() {
            continue;
        }
        let code: String = code_lines(code).collect::<Vec<_>>().join("\n");
        let here = module_path(name);
        let mut targets = std::collections::BTreeSet::new();
        let mut named: Vec<Vec<String>> = Vec::new();
        let word = |c: char| c.is_alphanumeric() || c == '_';
        for base in ["crate::", "super::", "self::"] {
            for (at, _) in code.match_indices(base) {
                if code[..at].chars().next_back().is_some_and(word) {
                    continue;
                }
                let start: Vec<String> = match base {
                    "crate::" => Vec::new(),
                    "self::" => here.clone(),
                    _ => here[..here.len().saturating_sub(1)].to_vec(),
                };
                let rest = &code[at + base.len()..];
                let heads: Vec<String> = match rest.strip_prefix('{') {
                    Some(group) => {
                        let group = &group[..group.find('}').unwrap_or(group.len())];
                        group
                            .split(',')
                            .map(|item| {
                                item.trim()
                                    .chars()
                                    .take_while(|c| word(*c) || *c == ':')
                                    .collect()
                            })
                            .collect()
                    }
                    None => {
                        let path: String =
                            rest.chars().take_while(|c| word(*c) || *c == ':').collect();
                        vec![path]
                    }
                };
                for head in heads {
                    let mut path = start.clone();
                    for segment in head.split("::").filter(|s| !s.is_empty()) {
                        if segment == "super" {
                            path.pop();
                        } else if segment == "*" {
                        } else {
                            path.push(segment.to_owned());
                        }
                    }
                    named.push(path);
                }
            }
        }
        if code.contains("use super::*") {
            named.push(here[..here.len().saturating_sub(1)].to_vec());
        }
        for line in code.lines() {
            let line = line.trim_start();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
            if let Some(child) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
                let prefix = format!("{child}::");
                let used = code.match_indices(&prefix).any(|(at, _)| {
                    !code[..at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| word(c) || c == ':')
                });
                if used {
                    named.push([here.clone(), vec![child.to_owned()]].concat());
                }
            }
        }
        for path in named {
            if let Some(target) = resolve(&path).filter(|t| *t != name) {
                targets.insert(target.to_owned());
            }
        }
        graph.insert(name.clone(), targets);
    }
    graph
}

/// The file-level import cycles that remain from before the rule (issue 33): each may only
/// shrink and must be struck from this list once it is gone; any other cycle fails the test.
/// They are the directories whose files share their parent's namespace (`use super::*`).
const KNOWN_FILE_CYCLES: &[&[&str]] = &[
    &["audit/mod.rs", "audit/query.rs"],
    &[
        "issuance/current.rs",
        "issuance/intermediate.rs",
        "issuance/mod.rs",
    ],
    &[
        "signer/check.rs",
        "signer/crl.rs",
        "signer/material.rs",
        "signer/mod.rs",
    ],
    &[
        "authn/jwt/dev_token.rs",
        "authn/jwt/jwks.rs",
        "authn/jwt/mod.rs",
        "authn/mod.rs",
    ],
    &["grpc/audit.rs", "grpc/cluster.rs"],
    &["config/"],
    &["store/"],
    &["server/"],
    &["cli/"],
];

/// The cycles of `graph` not covered by a known cycle, and the known cycles no longer found.
fn new_and_gone_cycles(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    known: &[&[&str]],
) -> (Vec<Vec<String>>, Vec<String>) {
    let found = cycles(graph);
    let covers = |known: &[&str], file: &str| {
        known
            .iter()
            .any(|k| file == *k || (k.ends_with('/') && file.starts_with(k)))
    };
    let new = found
        .iter()
        .filter(|cycle| !known.iter().any(|k| cycle.iter().all(|f| covers(k, f))))
        .cloned()
        .collect();
    // A list of files must be found exactly (so it shrinks as its cycle does); a directory
    // holds while any cycle stays inside it.
    let gone = known
        .iter()
        .filter(|k| {
            !found.iter().any(|cycle| {
                if k.iter().any(|f| f.ends_with('/')) {
                    cycle.iter().all(|f| covers(k, f))
                } else {
                    cycle.len() == k.len() && cycle.iter().all(|f| covers(k, f))
                }
            })
        })
        .map(|k| k.join(", "))
        .collect();
    (new, gone)
}

#[test]
fn no_new_import_cycle_between_files() {
    let graph = file_imports(&sources());
    assert!(
        graph["issuance/mod.rs"].contains("policy.rs"),
        "the file graph is read"
    );
    let (new, gone) = new_and_gone_cycles(&graph, KNOWN_FILE_CYCLES);
    assert!(new.is_empty(), "file-level import cycles: {new:?}");
    assert!(
        gone.is_empty(),
        "known cycles that are gone: strike them from KNOWN_FILE_CYCLES: {gone:?}"
    );
}

#[test]
fn the_file_cycle_check_sees_super_globs_children_and_groups() {
    let file = |name: &str, text: &str| (name.to_owned(), format!("//! x\n{text}"));
    let files = vec![
        file("a/mod.rs", "mod b;\nmod c;\npub fn f() { b::g(); }\n"),
        file("a/b.rs", "use super::*;\n"),
        file("a/c.rs", "use crate::{d, a::b};\n"),
        file(
            "d.rs",
            "use crate::a::c::X;\n#[cfg(test)]\nmod tests { use crate::a::b; }\n",
        ),
    ];
    let graph = file_imports(&files);
    assert_eq!(graph["a/mod.rs"].iter().collect::<Vec<_>>(), ["a/b.rs"]);
    assert_eq!(graph["a/b.rs"].iter().collect::<Vec<_>>(), ["a/mod.rs"]);
    assert_eq!(
        graph["a/c.rs"].iter().collect::<Vec<_>>(),
        ["a/b.rs", "d.rs"]
    );
    assert_eq!(graph["d.rs"].iter().collect::<Vec<_>>(), ["a/c.rs"]);
    let (new, gone) = new_and_gone_cycles(&graph, &[&["x/"]]);
    assert_eq!(
        new,
        [
            vec!["a/b.rs".to_owned(), "a/mod.rs".to_owned()],
            vec!["a/c.rs".to_owned(), "d.rs".to_owned()]
        ]
    );
    assert_eq!(gone, ["x/"]);
    let (new, gone) = new_and_gone_cycles(&graph, &[&["a/"], &["a/c.rs", "d.rs"]]);
    assert!(new.is_empty() && gone.is_empty(), "{new:?} {gone:?}");
    // A listed cycle that shrank must be listed as it is now.
    let (_, gone) = new_and_gone_cycles(&graph, &[&["a/"], &["a/c.rs", "d.rs", "e.rs"]]);
    assert_eq!(gone, ["a/c.rs, d.rs, e.rs"]);
}

/// Lines that are code (not comments).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.starts_with("//"))
}

/// `Code::…` or `Status::…` as a path of its own (not `ExitCode::…` or `ServingStatus::…`).
fn mentions_grpc_code(line: &str) -> bool {
    ["Code::", "Status::"].iter().any(|path| {
        line.match_indices(path).any(|(at, _)| {
            !line[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn the_grpc_code_check_sees_through_lookalikes() {
    assert!(mentions_grpc_code("let code = Code::Internal;"));
    assert!(mentions_grpc_code("tonic::Code::Unauthenticated"));
    assert!(mentions_grpc_code("Err(Status::new(code, message))"));
    assert!(!mentions_grpc_code("ExitCode::SUCCESS"));
    assert!(!mentions_grpc_code("ServingStatus::Serving"));
    assert!(!mentions_grpc_code("axum::http::StatusCode::NOT_FOUND"));
}

/// Asserts that no source file outside `allowed` (files, or directories ending in `/`) has a
/// code line for which `uses` holds.
fn only_in(allowed: &[&str], uses: impl Fn(&str) -> bool, what: &str) {
    for (name, text) in sources() {
        let inside = |allowed: &&str| {
            name == *allowed || (allowed.ends_with('/') && name.starts_with(allowed))
        };
        if !allowed.iter().any(inside) {
            assert!(!code_lines(&text).any(&uses), "{name} uses {what}");
        }
    }
}

#[test]
fn only_the_store_uses_sled() {
    only_in(&["store/"], |l| l.contains("sled::"), "sled");
}

#[test]
fn only_the_kubernetes_module_talks_to_kubernetes() {
    let kube = |l: &str| l.contains("kube::") || l.contains("k8s_openapi");
    only_in(&["kubernetes/"], kube, "kube");
}

#[test]
fn the_core_knows_nothing_of_grpc() {
    let tonic = |l: &str| l.contains("tonic::") || l.contains("tonic_");
    let edge = paths_in(Edge);
    only_in(
        &edge.iter().map(String::as_str).collect::<Vec<_>>(),
        tonic,
        "tonic",
    );
}

#[test]
fn only_grpc_maps_errors_to_status_codes() {
    // The client builds one status of its own: its interceptor refusing a header value it
    // cannot send, before any request leaves.
    only_in(
        &["grpc/status.rs", "client.rs"],
        mentions_grpc_code,
        "tonic::Code or tonic::Status",
    );
}

/// The top-level modules each top-level module names (`crate::x…` paths and `use crate::{x, …}`
/// groups), outside its `#[cfg(test)]` module and comments.
fn module_imports() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let files = sources();
    let top = |name: &str| {
        name.split('/')
            .next()
            .unwrap_or(name)
            .trim_end_matches(".rs")
            .to_owned()
    };
    let modules: std::collections::BTreeSet<String> = files
        .iter()
        .map(|(name, _)| top(name))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph = std::collections::BTreeMap::new();
    for (name, text) in &files {
        let from = top(name);
        if !modules.contains(&from) {
            continue;
        }
        let code: String = code_lines(without_tests(name, text))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::{c, d}}`: the first segment of each top-level item.
                let (mut depth, mut item) = (0, String::new());
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            named.push(item.trim().split("::").next().unwrap_or("").to_owned());
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                named.push(item.trim().split("::").next().unwrap_or("").to_owned());
            } else {
                let segment: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                named.push(segment);
            }
        }
        let entry = graph
            .entry(from.clone())
            .or_insert_with(std::collections::BTreeSet::new);
        for module in named {
            if module != from && modules.contains(&module) {
                entry.insert(module);
            }
        }
    }
    graph
}

/// The cycles of a graph: each strongly connected component of more than one node (Tarjan).
fn cycles(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        index: std::collections::HashMap<&'a str, usize>,
        low: std::collections::HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a str) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        for next in walk.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[node].min(walk.low[next]);
                walk.low.insert(node, low);
            } else if walk.stack.contains(&next) {
                let low = walk.low[node].min(walk.index[next]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut component = Vec::new();
            while let Some(member) = walk.stack.pop() {
                component.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                walk.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: Default::default(),
        low: Default::default(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.found
}

#[test]
fn no_cycle_between_top_level_modules() {
    let graph = module_imports();
    assert!(
        graph["issuance"].contains("policy"),
        "the import graph is read"
    );
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|cycle| {
            let edges: Vec<String> = cycle
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| cycle.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            format!("{{{}}}: {}", cycle.join(", "), edges.join(", "))
        })
        .collect();
    assert!(found.is_empty(), "import cycles: {}", described.join("; "));
}

#[test]
fn the_cycle_check_finds_and_names_a_cycle() {
    let graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = [
        ("audit", vec!["config"]),
        ("config", vec!["store"]),
        ("store", vec!["audit", "record"]),
        ("record", vec![]),
    ]
    .into_iter()
    .map(|(from, to)| (from.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["audit", "config", "store"]]);
}
