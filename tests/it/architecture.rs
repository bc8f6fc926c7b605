//! The direction of dependencies, as docs/architecture.md draws it: the domain imports
//! only the domain; the pipeline (`issuance`) the domain and `authn`; the adapters the domain
//! (and `kubernetes` also `authn`, whose cluster API it implements); only the edge imports the
//! edge. Only `store` touches sled, only `kubernetes` the Kubernetes API, only the edge tonic,
//! only `grpc/status.rs` builds gRPC statuses, and the domain never uses tokio. Imports are read
//! from `crate::…` paths and `use crate::{…}` groups, not substrings, and any cycle between
//! top-level modules is named.

use std::path::Path;

const EDGE: &[&str] = &[
    "grpc/",
    "server/",
    "monitoring.rs",
    "client.rs",
    "loadgen.rs",
    "members.rs",
    "cli/",
    "lib.rs",
    "main.rs",
];

/// The domain: synchronous, no I/O but reading CA files, no tokio, tonic, sled or kube.
const DOMAIN: &[&str] = &[
    "audit",
    "caller",
    "clock",
    "csr",
    "digest",
    "federation",
    "identity",
    "keys",
    "metrics",
    "policy",
    "ratelimit",
    "record",
    "revocation",
    "signer",
    "ui",
];

/// The edge: gRPC, the server's lifecycle, the CLI and clients. May import anything.
const EDGE_MODULES: &[&str] = &[
    "bundle_client",
    "cli",
    "client",
    "grpc",
    "loadgen",
    "members",
    "monitoring",
    "server",
];

/// What each module below the edge may import, besides the domain. A top-level module missing
/// from this table and from the edge fails the test, so a new module gets a place on purpose.
const ALLOWED_BEYOND_DOMAIN: &[(&str, &[&str])] = &[
    // The pipeline runs the authenticators (their chain and the impersonation check).
    ("issuance", &["authn"]),
    // Adapters.
    ("authn", &[]),
    ("kubernetes", &["authn"]),
    ("store", &[]),
    ("config", &[]),
    ("export", &[]),
];

/// The modules `from` may import, or None for the edge (anything).
fn allowed_imports(from: &str) -> Option<Vec<&'static str>> {
    if EDGE_MODULES.contains(&from) {
        return None;
    }
    let beyond: &[&str] = if DOMAIN.contains(&from) {
        &[]
    } else {
        ALLOWED_BEYOND_DOMAIN
            .iter()
            .find(|(module, _)| *module == from)
            .map(|(_, allowed)| *allowed)
            .unwrap_or_else(|| {
                panic!("top-level module {from} has no place in the architecture table")
            })
    };
    Some(DOMAIN.iter().chain(beyond).copied().collect())
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
    let domain: Vec<String> = DOMAIN
        .iter()
        .flat_map(|m| [format!("{m}.rs"), format!("{m}/")])
        .collect();
    for (name, text) in sources() {
        let in_domain = domain
            .iter()
            .any(|d| name == *d || (d.ends_with('/') && name.starts_with(d.as_str())));
        if in_domain {
            let text = text.split("#[cfg(test)]").next().unwrap_or(&text);
            assert!(
                !code_lines(text).any(|l| l.contains("tokio")),
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
    only_in(EDGE, tonic, "tonic");
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
        let text = text.split("#[cfg(test)]").next().unwrap_or(text);
        let code: String = code_lines(text).collect::<Vec<_>>().join("\n");
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
