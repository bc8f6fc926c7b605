//! The direction of dependencies (architecture.md): the core knows neither gRPC nor sled; only
//! `store` touches sled; only the edge (`grpc`, `server`, `monitoring`, `client`, `cli`) touches
//! tonic.

use std::path::Path;

const EDGE: &[&str] = &[
    "grpc/",
    "server/",
    "monitoring.rs",
    "client.rs",
    "loadgen.rs",
    "cli/",
    "lib.rs",
    "main.rs",
];

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

/// `Code::…` as a path of its own (not `ExitCode::…`).
fn mentions_grpc_code(line: &str) -> bool {
    line.match_indices("Code::").any(|(at, _)| {
        !line[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn the_grpc_code_check_sees_through_lookalikes() {
    assert!(mentions_grpc_code("let code = Code::Internal;"));
    assert!(mentions_grpc_code("tonic::Code::Unauthenticated"));
    assert!(!mentions_grpc_code("ExitCode::SUCCESS"));
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
    only_in(&["grpc/mod.rs"], mentions_grpc_code, "tonic::Code");
}
