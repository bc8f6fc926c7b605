//! The shape of `src/`, checked: the layer of every top-level module is the table below
//! (`LAYERS`, the one place it is written), and imports point down it; only `store` touches
//! sled, only `kubernetes` the Kubernetes API, only the edge tonic, only `grpc/status.rs`
//! builds gRPC statuses, and the domain never uses tokio; no cycle between top-level modules
//! and no new one between files; no file over 800 lines; every file says what it is for. Files
//! are read whole up to their test module, imports from paths and `use` groups, not substrings.

use std::path::Path;

/// The layers of `src/`, lowest first: each is the directory of that name, and every file of
/// the crate but its roots lies in one. This list and [`ALSO_ALLOWED`] are the one statement of
/// the layering (docs/architecture.md draws it).
const LAYERS: &[&str] = &["domain", "issuance", "adapters", "edge"];

/// What a unit below the edge may import besides the domain. Units are each layer's
/// second-level modules (`domain/audit`, `adapters/store`, `edge/grpc`), and `issuance`.
const ALSO_ALLOWED: &[(&str, &[&str])] = &[
    // The pipeline runs the authenticators (their chain and the impersonation check).
    ("issuance", &["adapters/authn"]),
    // The Kubernetes API implements authn's cluster API (TokenReview).
    ("adapters/kubernetes", &["adapters/authn"]),
    // `[pkcs11]` is read into the PKCS#11 adapter's settings.
    ("adapters/config", &["adapters/pkcs11"]),
];

/// The files of `src/` outside the layers.
const CRATE_ROOTS: &[&str] = &["lib.rs", "main.rs"];

/// No file in `src/` is longer (generated code is in `OUT_DIR`, not here).
const MAX_FILE_LINES: usize = 800;

/// The unit a file belongs to (`domain/audit/query.rs` → `domain/audit`, `issuance/mod.rs` →
/// `issuance`, `domain/mod.rs` → `domain`), or None for a crate root.
fn unit_of(file: &str) -> Option<String> {
    let parts: Vec<&str> = file.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        [root] if CRATE_ROOTS.contains(&format!("{root}.rs").as_str()) => None,
        ["issuance", ..] => Some("issuance".to_owned()),
        [layer] | [layer, "mod"] => Some((*layer).to_owned()),
        [layer, unit, ..] => Some(format!("{layer}/{unit}")),
        [] => None,
    }
}

/// The layer a unit is in (its first segment).
fn layer(unit: &str) -> &str {
    unit.split('/').next().unwrap_or(unit)
}

/// The files and directories (ending in `/`) of a layer, for the checks by path.
fn paths_in(layer: &str) -> Vec<String> {
    let mut paths = vec![format!("{layer}/")];
    if layer == "edge" {
        paths.extend(CRATE_ROOTS.iter().map(|r| (*r).to_owned()));
    }
    paths
}

/// Whether `from` may import `to`.
fn allowed(from: &str, to: &str) -> bool {
    assert!(
        LAYERS.contains(&layer(from)) && LAYERS.contains(&layer(to)),
        "{from} -> {to}: a unit outside the layers {LAYERS:?}"
    );
    layer(from) == "edge"
        || layer(to) == "domain"
        || ALSO_ALLOWED
            .iter()
            .any(|(unit, also)| *unit == from && also.contains(&to))
}

/// The imports that break the layering, as `from -> to`.
fn violations(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (from, targets) in graph {
        for to in targets {
            if !allowed(from, to) {
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
        graph["domain/signer"].contains("domain/policy"),
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
        ("domain/policy", vec!["domain/identity", "adapters/authn"]),
        (
            "adapters/store",
            vec!["domain/audit", "edge/grpc", "issuance"],
        ),
        (
            "issuance",
            vec!["adapters/authn", "domain/signer", "adapters/store"],
        ),
        (
            "adapters/kubernetes",
            vec!["adapters/authn", "adapters/store"],
        ),
        ("edge/grpc", vec!["issuance", "adapters/store"]),
    ]
    .into_iter()
    .map(|(from, to)| (from.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        violations(&graph),
        [
            "adapters/kubernetes -> adapters/store",
            "adapters/store -> edge/grpc",
            "adapters/store -> issuance",
            "domain/policy -> adapters/authn",
            "issuance -> adapters/store"
        ]
    );
}

#[test]
fn the_domain_never_uses_tokio() {
    let domain = paths_in("domain");
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
fn every_file_is_in_a_layer() {
    let files = sources();
    for (name, _) in &files {
        if let Some(unit) = unit_of(name) {
            assert!(
                LAYERS.contains(&layer(&unit)),
                "{name} is outside the layers {LAYERS:?}"
            );
        }
    }
    for layer in LAYERS {
        assert!(
            files
                .iter()
                .any(|(name, _)| name.starts_with(&format!("{layer}/"))),
            "no {layer}/ in src/"
        );
    }
    for (unit, also) in ALSO_ALLOWED {
        for unit in std::iter::once(unit).chain(also.iter()) {
            assert!(
                files
                    .iter()
                    .any(|(name, _)| unit_of(name).as_deref() == Some(unit)),
                "{unit} is in ALSO_ALLOWED but not in src/"
            );
        }
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

#[test]
fn no_import_cycle_between_files() {
    let graph = file_imports(&sources());
    assert!(
        graph["issuance/pipeline.rs"].contains("domain/policy.rs"),
        "the file graph is read"
    );
    let found = cycles(&graph);
    assert!(found.is_empty(), "file-level import cycles: {found:?}");
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
    assert_eq!(
        cycles(&graph),
        [
            vec!["a/b.rs".to_owned(), "a/mod.rs".to_owned()],
            vec!["a/c.rs".to_owned(), "d.rs".to_owned()]
        ]
    );
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
    only_in(&["adapters/store/"], |l| l.contains("sled::"), "sled");
}

#[test]
fn only_the_pkcs11_adapter_uses_cryptoki() {
    only_in(
        &["adapters/pkcs11/"],
        |l| l.contains("cryptoki::"),
        "cryptoki",
    );
}

#[test]
fn only_the_kubernetes_module_talks_to_kubernetes() {
    let kube = |l: &str| l.contains("kube::") || l.contains("k8s_openapi");
    only_in(&["adapters/kubernetes/"], kube, "kube");
}

#[test]
fn the_core_knows_nothing_of_grpc() {
    let tonic = |l: &str| l.contains("tonic::") || l.contains("tonic_");
    let edge = paths_in("edge");
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
        &["edge/grpc/status.rs", "edge/client.rs"],
        mentions_grpc_code,
        "tonic::Code or tonic::Status",
    );
}

/// The units each unit names (`crate::…` paths and `use crate::{…}` groups), outside test
/// modules and comments; a unit is `issuance` or a layer's second-level module.
fn module_imports() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let unit_of_path = |path: &str| {
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            ["issuance", ..] => Some("issuance".to_owned()),
            [layer, unit, ..] if LAYERS.contains(layer) => Some(format!("{layer}/{unit}")),
            _ => None,
        }
    };
    let path_at = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect()
    };
    let mut graph = std::collections::BTreeMap::new();
    for (name, text) in &sources() {
        let Some(from) = unit_of(name).filter(|unit| unit.contains('/') || unit == "issuance")
        else {
            continue;
        };
        let code: String = code_lines(without_tests(name, text))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            match rest.strip_prefix('{') {
                // `use crate::{a::b, c::{d, e}}`: each item's path.
                Some(group) => named.extend(group.split(',').map(|item| path_at(item.trim()))),
                None => named.push(path_at(rest)),
            }
        }
        let entry = graph
            .entry(from.clone())
            .or_insert_with(std::collections::BTreeSet::new);
        for unit in named.iter().filter_map(|path| unit_of_path(path)) {
            if unit != from {
                entry.insert(unit);
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
        graph["issuance"].contains("domain/policy"),
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
