//! The documents hold together: the README stays short and names every document under `docs/`,
//! and every relative link in the README and the documents reaches a file, and a heading in it
//! when it names one (as GitHub renders anchors).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 200;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README and every Markdown file under `docs/`, by path relative to the repository.
fn documents() -> Vec<PathBuf> {
    let mut found = vec![
        PathBuf::from("README.md"),
        PathBuf::from("deploy/README.md"),
    ];
    let mut pending = vec![root().join("docs")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path.strip_prefix(root()).unwrap_or(&path).to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces as
/// hyphens, and `-1`, `-2`… on repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    seen
}

/// Every link target in prose (`[text](target)`, images too), inline code left out.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text) {
        let line: String = line.split('`').step_by(2).collect();
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

/// What is wrong with the relative links of the document at `path` (relative to `root`), as
/// `document: target (why)`.
fn broken_links(root: &Path, path: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for target in links(text) {
        if target.starts_with("http://") || target.starts_with("https://") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        let body = if file.is_empty() {
            text.to_owned()
        } else {
            let file = path.parent().unwrap_or(Path::new("")).join(file);
            match std::fs::read(root.join(&file)) {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(_) => {
                    broken.push(format!("{}: {target} (no such file)", path.display()));
                    continue;
                }
            }
        };
        if anchor.is_some_and(|anchor| !anchors(&body).contains(anchor)) {
            broken.push(format!("{}: {target} (no such heading)", path.display()));
        }
    }
    broken
}

#[test]
fn every_relative_link_reaches_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(root().join(&doc)).unwrap();
        checked += links(&text).len();
        broken.extend(broken_links(&root(), &doc, &text));
    }
    assert!(checked > 50, "the links are read ({checked})");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_finds_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("docs/a.md"),
        "# A\n\n## The admin API's access model\n\n```sh\n# not a heading\n```\n",
    )
    .unwrap();
    let text = "# R\n\n[ok](docs/a.md#the-admin-apis-access-model) [self](#r) \
                [gone](docs/b.md) [wrong](docs/a.md#not-a-heading) `[code](nowhere.md)`\n";
    assert_eq!(
        broken_links(dir.path(), Path::new("README.md"), text),
        [
            "README.md: docs/b.md (no such file)",
            "README.md: docs/a.md#not-a-heading (no such heading)"
        ]
    );
}

#[test]
fn repeated_headings_get_numbered_anchors() {
    let text = "# Journal\n## Entry\n## Entry\n## Why `accepts`, and not an alias\n";
    let found = anchors(text);
    for anchor in [
        "journal",
        "entry",
        "entry-1",
        "why-accepts-and-not-an-alias",
    ] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
}

#[test]
fn the_readme_is_short_and_names_every_document() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; at most {README_MAX_LINES}: move the detail to docs/"
    );
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|t| t.split('#').next().unwrap_or_default().to_owned())
        .collect();
    let unlinked: Vec<String> = documents()
        .into_iter()
        .filter(|doc| doc.starts_with("docs"))
        .map(|doc| doc.to_string_lossy().into_owned())
        .filter(|doc| !linked.contains(doc))
        .collect();
    assert!(
        unlinked.is_empty(),
        "documents the README does not name: {unlinked:?}"
    );
}
