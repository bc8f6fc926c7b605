//! The status page (`/ui` on the admin port): server-rendered HTML with inline SVG, no script.
//! This module only renders a [`StatusPage`] someone gathered (`grpc::ui` asks the audit API);
//! every value it prints goes through [`escape`], whatever its source.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::domain::clock::format_time;

/// Everything the page shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusPage {
    pub now: Option<SystemTime>,
    /// The replica that rendered the page (its `[replicas]` entry, or empty).
    pub this_member: String,
    pub meshes: Vec<MeshStatus>,
    /// With `[replicas]`: who answered the page's cluster-wide questions, and who did not.
    pub cluster: Option<ClusterStatus>,
    /// The window the activity figures cover.
    pub activity_window: Duration,
    /// Certificates issued in the window, per mesh.
    pub issued: Vec<(String, u64)>,
    /// Refusals recorded in the window, per mesh (empty: before a mesh was known) and reason.
    pub denials: Vec<(String, String, u64)>,
    /// Whether there were more refusal records than the page reads.
    pub denials_truncated: bool,
    /// Certificates expiring within this of now...
    pub expiring_window: Duration,
    /// ...per namespace.
    pub expiring: Vec<(String, u64)>,
    pub expiring_truncated: bool,
    /// This replica's latest signed checkpoint.
    pub checkpoint: Option<CheckpointStatus>,
    /// Per mesh: the trust domains it accepts, and its partners' bundles (this replica's view).
    pub trust: Vec<TrustStatus>,
    /// This replica's record store and the forecast of its volume.
    pub store: Option<StoreStatus>,
}

/// The record store's size and when its volume is forecast full (this replica).
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreStatus {
    pub bytes: u64,
    pub records: u64,
    pub bytes_per_record: f64,
    pub records_per_day: f64,
    pub volume_free_bytes: u64,
    /// None: pruning keeps up before it fills.
    pub full_in: Option<Duration>,
    /// Under `capacity::WARN_WITHIN`.
    pub alarming: bool,
}

/// What one mesh accepts besides itself, and the partner bundles held for it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustStatus {
    pub mesh: String,
    pub accepts: Vec<String>,
    pub partners: Vec<PartnerRow>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PartnerRow {
    pub trust_domain: String,
    pub bundle_url: String,
    /// The bundle held: (sequence, roots, roots cross-certified, when fetched).
    pub held: Option<(u64, u32, u32, SystemTime)>,
    pub unprotected: bool,
    pub last_attempt: Option<SystemTime>,
    /// Why the last fetch failed (empty: it did not).
    pub last_error: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct MeshStatus {
    pub name: String,
    pub trust_domain: String,
    /// The signing intermediate.
    pub intermediate: Certificate,
    pub roots: Vec<RootStatus>,
    /// `meshroot rotate plan`'s "now:" line for the mesh.
    pub rotation: String,
    /// Unexpired certificates that chain to no root of the bundle.
    pub stranded: u64,
    /// ztunnel asks for this mesh's certificates, but its chain carries URI name constraints.
    pub ztunnel_constrained: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Certificate {
    pub subject: String,
    pub not_after: Option<SystemTime>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RootStatus {
    pub certificate: Certificate,
    /// The first hex digits of its SHA-256.
    pub fingerprint: String,
    /// The signing intermediate chains to it.
    pub signing: bool,
    /// Unexpired certificates (cluster-wide) that chain to it, and the last one's NotAfter.
    pub certificates: u64,
    pub until: Option<SystemTime>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterStatus {
    pub members: Vec<String>,
    pub answered: Vec<String>,
    /// Member and why it did not answer.
    pub missing: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CheckpointStatus {
    pub size: u64,
    /// The signed note, as published.
    pub note: String,
    pub verifier_key: String,
}

/// HTML text for `value`: `&`, `<`, `>`, `"` and `'` as character references, so a value can
/// stand in element content and in quoted attributes alike.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3d 4h", "5h 12m", "42s"; "expired 2h ago" when `at` is past.
pub(crate) fn countdown(at: SystemTime, now: SystemTime) -> String {
    let (span, past) = match at.duration_since(now) {
        Ok(left) => (left, false),
        Err(e) => (e.duration(), true),
    };
    let secs = span.as_secs();
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    let text = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", secs % 60)
    } else {
        format!("{secs}s")
    };
    if past {
        format!("expired {text} ago")
    } else {
        format!("in {text}")
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:72rem}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}\
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .75rem;text-align:left;\
border-bottom:1px solid #eaeef2;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.warn{color:#9a6700}.bad{color:#cf222e;font-weight:600}.ok{color:#1a7f37}\
pre{background:#f6f8fa;padding:.75rem;overflow-x:auto}small{color:#57606a}";

/// Days left under which an expiry is shown as a warning.
const WARN_DAYS: u64 = 30;

fn expiry_cell(not_after: Option<SystemTime>, now: SystemTime, figure: &str) -> String {
    match not_after {
        None => "<td>?</td>".to_owned(),
        Some(at) => {
            let class = match at.duration_since(now) {
                Err(_) => "bad",
                Ok(left) if left < Duration::from_secs(WARN_DAYS * 86_400) => "warn",
                Ok(_) => "ok",
            };
            format!(
                "<td class=\"{class}\" data-figure=\"{}\">{}<br><small>{}</small></td>",
                escape(figure),
                escape(&countdown(at, now)),
                escape(&format_time(at))
            )
        }
    }
}

/// Horizontal bars, one per (label, value), as inline SVG; the figures are in the text too.
fn bars(title: &str, figure_prefix: &str, rows: &[(String, u64)]) -> String {
    if rows.is_empty() {
        return "<p><small>none</small></p>".to_owned();
    }
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let (row_height, label_width, bar_width) = (22u64, 260u64, 360u64);
    let height = row_height * rows.len() as u64 + 4;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" width=\"{}\" height=\"{height}\" \
         aria-label=\"{}\">",
        label_width + bar_width + 80,
        escape(title)
    );
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = i as u64 * row_height + 2;
        let width = (value * bar_width).div_ceil(max);
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"13\">{}</text>\
             <rect x=\"{label_width}\" y=\"{y}\" width=\"{width}\" height=\"{}\" fill=\"#0969da\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"13\" data-figure=\"{}\">{value}</text>",
            y + 15,
            escape(label),
            row_height - 6,
            label_width + width + 6,
            y + 15,
            escape(&format!("{figure_prefix}{label}")),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole page.
/// "Trust between meshes": what each mesh accepts, and each partner bundle: sequence, age,
/// the last fetch and its error.
fn trust_section(html: &mut String, page: &StatusPage) {
    html.push_str("<h2>Trust between meshes</h2><table><tr><th>mesh</th><th>accepts</th></tr>");
    for trust in &page.trust {
        let accepts = if trust.accepts.is_empty() {
            "its own trust domain only".to_owned()
        } else {
            trust.accepts.join(", ")
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td data-figure=\"accepts-{}\">{}</td></tr>",
            escape(&trust.mesh),
            escape(&trust.mesh),
            escape(&accepts)
        );
    }
    html.push_str("</table>");
    let partners: Vec<(&str, &PartnerRow)> = page
        .trust
        .iter()
        .flat_map(|t| t.partners.iter().map(move |p| (t.mesh.as_str(), p)))
        .collect();
    if partners.is_empty() {
        return;
    }
    html.push_str(
        "<table><tr><th>mesh</th><th>partner</th><th>bundle held</th><th>age</th>\
         <th>last fetch</th></tr>",
    );
    for (mesh, partner) in partners {
        let figure = format!("{mesh}-{}", partner.trust_domain);
        let (held, age) = match partner.held {
            Some((sequence, roots, crossed, fetched)) => (
                format!(
                    "sequence {sequence}, {roots} root(s), {crossed} cross-certified{}",
                    if partner.unprotected {
                        " (published unprotected)"
                    } else {
                        ""
                    }
                ),
                page.now
                    .and_then(|now| now.duration_since(fetched).ok())
                    .map(|age| format!("{} s", age.as_secs()))
                    .unwrap_or_default(),
            ),
            None => ("none: its chains are refused".to_owned(), String::new()),
        };
        let uncovered = partner
            .held
            .is_some_and(|(_, roots, crossed, _)| !partner.unprotected && crossed < roots);
        let (class, fetch) = match (&partner.last_attempt, partner.last_error.as_str()) {
            (None, _) => ("", "not yet".to_owned()),
            (Some(at), "") => ("good", format!("{}: ok", format_time(*at))),
            (Some(at), error) => ("bad", format!("{}: {error}", format_time(*at))),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}<br><small>{}</small></td><td class=\"{}\" data-figure=\"partner-held-{}\">{}</td>\
             <td class=\"n\" data-figure=\"partner-age-{}\">{}</td><td class=\"{class}\" data-figure=\"partner-fetch-{}\">{}</td></tr>",
            escape(mesh),
            escape(&partner.trust_domain),
            escape(&partner.bundle_url),
            if uncovered || partner.held.is_none() { "bad" } else { "" },
            escape(&figure),
            escape(&held),
            escape(&figure),
            escape(&age),
            escape(&figure),
            escape(&fetch),
        );
    }
    html.push_str("</table>");
}

pub fn render(page: &StatusPage) -> String {
    let now = page.now.unwrap_or(SystemTime::UNIX_EPOCH);
    let hours = |d: Duration| d.as_secs() / 3_600;
    let mut html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>meshroot status</title><style>{STYLE}</style></head><body>\
         <h1>meshroot status</h1><p><small>as of {}{}; this page reads the audit API and shows \
         no key or token</small></p>",
        escape(&format_time(now)),
        if page.this_member.is_empty() {
            String::new()
        } else {
            format!(", from {}", escape(&page.this_member))
        }
    );

    if let Some(cluster) = page.cluster.as_ref().filter(|c| !c.missing.is_empty()) {
        let names: Vec<String> = cluster.missing.iter().map(|(m, _)| escape(m)).collect();
        let _ = write!(
            html,
            "<p class=\"bad\" data-figure=\"incomplete\">Incomplete: {} did not answer; the \
             cluster-wide figures below lack their logs.</p>",
            names.join(", ")
        );
    }
    for mesh in page.meshes.iter().filter(|m| m.ztunnel_constrained) {
        let _ = write!(
            html,
            "<p class=\"bad\" data-figure=\"ztunnel-constrained-{}\">Mesh {}: ztunnel (its own, or \
             a peer mesh's under the same root) meets its chain, but its intermediate carries URI \
             name constraints, which ztunnel refuses: those handshakes fail. Fix: <code>meshroot \
             rotate intermediate --root-dir ROOT_DIR --mesh {} --out CA_DIR --data-plane \
             ambient</code>.</p>",
            escape(&mesh.name),
            escape(&mesh.name),
            escape(&mesh.name)
        );
    }
    html.push_str("<h2>Meshes</h2><table><tr><th>mesh</th><th>trust domain</th><th>intermediate</th><th>expires</th></tr>");
    for mesh in &page.meshes {
        let _ = write!(
            html,
            "<tr data-mesh=\"{}\"><td>{}</td><td data-figure=\"trust-domain-{}\">{}</td><td>{}</td>{}</tr>",
            escape(&mesh.name),
            escape(&mesh.name),
            escape(&mesh.name),
            escape(&mesh.trust_domain),
            escape(&mesh.intermediate.subject),
            expiry_cell(
                mesh.intermediate.not_after,
                now,
                &format!("intermediate-expiry-{}", mesh.name)
            ),
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Roots and rotation</h2>");
    for mesh in &page.meshes {
        let _ = write!(
            html,
            "<h3>{} <small>{}</small></h3><table><tr><th>root</th><th>sha256</th><th>expires</th>\
             <th>unexpired certificates chaining to it</th><th>last until</th></tr>",
            escape(&mesh.name),
            escape(&mesh.trust_domain)
        );
        for (index, root) in mesh.roots.iter().enumerate() {
            let _ = write!(
                html,
                "<tr><td>[{}] {}{}</td><td><code>{}</code></td>{}<td class=\"n\" data-figure=\"root-use-{}-{}\">{}</td><td>{}</td></tr>",
                index + 1,
                escape(&root.certificate.subject),
                if root.signing { " <small>(signing)</small>" } else { "" },
                escape(&root.fingerprint),
                expiry_cell(
                    root.certificate.not_after,
                    now,
                    &format!("root-expiry-{}-{}", mesh.name, index + 1)
                ),
                escape(&mesh.name),
                index + 1,
                root.certificates,
                root.until
                    .map(|t| escape(&format_time(t)))
                    .unwrap_or_else(|| "—".to_owned()),
            );
        }
        let _ = write!(
            html,
            "</table><p>chaining to no root: <span data-figure=\"stranded-{}\">{}</span>. \
             Now: <span data-figure=\"rotation-{}\">{}</span></p>",
            escape(&mesh.name),
            mesh.stranded,
            escape(&mesh.name),
            escape(&mesh.rotation)
        );
    }

    trust_section(&mut html, page);

    let _ = write!(
        html,
        "<h2>Last {} hours</h2><table><tr><th>mesh</th><th>issued</th><th>refused</th></tr>",
        hours(page.activity_window)
    );
    for (mesh, issued) in &page.issued {
        let refused: u64 = page
            .denials
            .iter()
            .filter(|(m, _, _)| m == mesh)
            .map(|(_, _, n)| n)
            .sum();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\" data-figure=\"issued-{}\">{issued}</td>\
             <td class=\"n\" data-figure=\"refused-{}\">{refused}</td></tr>",
            escape(mesh),
            escape(mesh),
            escape(mesh)
        );
    }
    html.push_str("</table>");
    let issued_rows: Vec<(String, u64)> = page.issued.clone();
    html.push_str(&bars("issued per mesh", "issued-bar-", &issued_rows));
    html.push_str("<h3>Refusals by mesh and reason</h3>");
    let denial_rows: Vec<(String, u64)> = page
        .denials
        .iter()
        .map(|(mesh, reason, n)| {
            let mesh = if mesh.is_empty() { "(no mesh)" } else { mesh };
            (format!("{mesh} / {reason}"), *n)
        })
        .collect();
    html.push_str(&bars(
        "refusals by mesh and reason",
        "refused-",
        &denial_rows,
    ));
    if page.denials_truncated {
        html.push_str("<p class=\"warn\">more refusals than the page reads: the figures are a lower bound (meshroot audit list --outcome denied)</p>");
    }

    let _ = write!(
        html,
        "<h2>Expiring in the next {} hours, per namespace</h2>",
        hours(page.expiring_window)
    );
    html.push_str(&bars(
        "certificates expiring per namespace",
        "expiring-",
        &page.expiring,
    ));
    if page.expiring_truncated {
        html.push_str("<p class=\"warn\">more certificates than the page reads: the figures are a lower bound</p>");
    }

    html.push_str("<h2>Cluster</h2>");
    match &page.cluster {
        None => html.push_str("<p>one replica (no [replicas])</p>"),
        Some(cluster) => {
            html.push_str("<table><tr><th>member</th><th>answered</th></tr>");
            for member in &cluster.members {
                let missing = cluster.missing.iter().find(|(m, _)| m == member);
                let answered = cluster.answered.contains(member);
                let (class, text) = match (answered, missing) {
                    (true, _) => ("ok", "yes".to_owned()),
                    (false, Some((_, why))) => ("bad", format!("no: {why}")),
                    (false, None) => ("warn", "not asked".to_owned()),
                };
                let _ = write!(
                    html,
                    "<tr><td>{}{}</td><td class=\"{class}\" data-figure=\"member-{}\">{}</td></tr>",
                    escape(member),
                    if *member == page.this_member {
                        " <small>(this replica)</small>"
                    } else {
                        ""
                    },
                    escape(member),
                    escape(&text)
                );
            }
            html.push_str("</table>");
        }
    }

    if let Some(store) = &page.store {
        html.push_str("<h2>Record store (this replica)</h2>");
        if store.alarming {
            let _ =
                write!(
                html,
                "<p class=\"bad\" data-figure=\"store-warning\">The store's volume is forecast \
                 full in {:.1} days at the last day's rate; issuance stops when it is. Grow the \
                 volume or shorten <code>[audit] issued_retention</code> (docs/audit.md).</p>",
                store.full_in.map(|d| d.as_secs_f64() / 86_400.0).unwrap_or(0.0)
            );
        }
        let _ = write!(
            html,
            "<table><tr><th>records</th><th>on disk</th><th>per record</th><th>last day</th>\
             <th>volume free</th><th>full in</th></tr><tr><td>{}</td><td>{}</td><td>{:.0} B</td>\
             <td>{:.0}</td><td>{}</td><td data-figure=\"store-full-in\">{}</td></tr></table>",
            store.records,
            escape(&crate::domain::capacity::human_bytes(store.bytes as f64)),
            store.bytes_per_record,
            store.records_per_day,
            escape(&crate::domain::capacity::human_bytes(
                store.volume_free_bytes as f64
            )),
            match store.full_in {
                Some(left) => format!("{:.1} days", left.as_secs_f64() / 86_400.0),
                None => "never (pruning keeps up)".to_owned(),
            }
        );
    }

    html.push_str("<h2>Latest signed checkpoint</h2>");
    match &page.checkpoint {
        None => html.push_str("<p>none yet</p>"),
        Some(checkpoint) => {
            let _ = write!(
                html,
                "<p>tree size <span data-figure=\"checkpoint-size\">{}</span>; verify with \
                 <code>{}</code></p><pre data-figure=\"checkpoint-note\">{}</pre>",
                checkpoint.size,
                escape(&checkpoint.verifier_key),
                escape(&checkpoint.note)
            );
        }
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<script>alert('x')</script>\"&";

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape(HOSTILE),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
        assert_eq!(escape("cluster.local"), "cluster.local");
    }

    #[test]
    fn countdowns_read_both_ways() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: i64| {
            if s >= 0 {
                now + Duration::from_secs(s as u64)
            } else {
                now - Duration::from_secs((-s) as u64)
            }
        };
        assert_eq!(countdown(at(3 * 86_400 + 4 * 3_600 + 5), now), "in 3d 4h");
        assert_eq!(countdown(at(5 * 3_600 + 12 * 60), now), "in 5h 12m");
        assert_eq!(countdown(at(42), now), "in 42s");
        assert_eq!(countdown(at(-7_200), now), "expired 2h 0m ago");
    }

    /// A page whose every text field is hostile.
    fn hostile_page() -> StatusPage {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let certificate = Certificate {
            subject: HOSTILE.into(),
            not_after: Some(now + Duration::from_secs(86_400)),
        };
        StatusPage {
            now: Some(now),
            this_member: HOSTILE.into(),
            meshes: vec![MeshStatus {
                name: HOSTILE.into(),
                trust_domain: HOSTILE.into(),
                intermediate: certificate.clone(),
                roots: vec![RootStatus {
                    certificate,
                    fingerprint: HOSTILE.into(),
                    signing: true,
                    certificates: 3,
                    until: Some(now),
                }],
                rotation: HOSTILE.into(),
                stranded: 0,
                ztunnel_constrained: true,
            }],
            cluster: Some(ClusterStatus {
                members: vec![HOSTILE.into(), "b".into()],
                answered: vec![HOSTILE.into()],
                missing: vec![("b".into(), HOSTILE.into())],
            }),
            activity_window: Duration::from_secs(86_400),
            issued: vec![(HOSTILE.into(), 7)],
            denials: vec![(HOSTILE.into(), HOSTILE.into(), 2)],
            denials_truncated: true,
            expiring_window: Duration::from_secs(4 * 3_600),
            expiring: vec![(HOSTILE.into(), 5)],
            expiring_truncated: false,
            checkpoint: Some(CheckpointStatus {
                size: 9,
                note: HOSTILE.into(),
                verifier_key: HOSTILE.into(),
            }),
            trust: vec![TrustStatus {
                mesh: HOSTILE.into(),
                accepts: vec![HOSTILE.into()],
                partners: vec![PartnerRow {
                    trust_domain: HOSTILE.into(),
                    bundle_url: HOSTILE.into(),
                    held: Some((11, 2, 1, now - Duration::from_secs(90))),
                    unprotected: false,
                    last_attempt: Some(now),
                    last_error: HOSTILE.into(),
                }],
            }],
            store: Some(StoreStatus {
                bytes: 3 << 30,
                records: 7_000_000,
                bytes_per_record: 450.0,
                records_per_day: 200_000.0,
                volume_free_bytes: 1 << 30,
                full_in: Some(Duration::from_secs(12 * 86_400)),
                alarming: true,
            }),
        }
    }

    #[test]
    fn every_value_is_escaped() {
        let html = render(&hostile_page());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("alert('x')"), "{html}");
        // The page's own markup has no script either.
        assert!(!html.to_ascii_lowercase().contains("javascript"));
        assert!(html.matches("&lt;script&gt;").count() >= 15, "{html}");
    }

    #[test]
    fn the_figures_are_in_the_markup() {
        let page = hostile_page();
        let html = render(&page);
        let name = escape(HOSTILE);
        for figure in [
            format!("data-figure=\"issued-{name}\">7<"),
            format!("data-figure=\"refused-{name}\">2<"),
            format!("data-figure=\"expiring-{name}\">5<"),
            format!("data-figure=\"root-use-{name}-1\">3<"),
            "data-figure=\"checkpoint-size\">9<".to_owned(),
            format!("data-figure=\"member-b\">no: {name}<"),
            format!("data-figure=\"member-{name}\">yes<"),
            format!("data-figure=\"accepts-{name}\">{name}<"),
            format!("data-figure=\"partner-age-{name}-{name}\">90 s<"),
            format!(
                "data-figure=\"partner-held-{name}-{name}\">sequence 11, 2 root(s), 1 cross-certified<"
            ),
        ] {
            assert!(html.contains(&figure), "{figure} not in {html}");
        }
        assert!(html.contains("in 1d 0h"));
        assert!(html.contains("lower bound"));
        assert!(html.contains("data-figure=\"incomplete\">Incomplete: b did not answer"));
    }
}
