//! Metric names: those a PromQL text uses, and those a `/metrics` page exposes.

use std::collections::BTreeSet;

/// Every `crmessenger_…` name in `text` (PromQL, rules, a dashboard).
pub fn used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crmessenger_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every series name an OpenMetrics page can serve: each `# TYPE` family with the
/// suffixes its type gives its samples (`_total`; `_bucket`, `_sum`, `_count`).
pub fn exposed(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        out.insert(name.to_string());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_promql_and_on_a_page() {
        let q = r#"sum by (channel) (rate(crmessenger_connector_messages_in_total[5m]) * on (account) group_left (channel) crmessenger_connector_account_info) > crmessenger_x"#;
        assert_eq!(
            used(q).into_iter().collect::<Vec<_>>(),
            ["crmessenger_connector_account_info", "crmessenger_connector_messages_in_total", "crmessenger_x"]
        );
        let page = "# HELP crmessenger_connector_messages_in x\n# TYPE crmessenger_connector_messages_in counter\n\
                    # TYPE crmessenger_connector_lag_seconds histogram\n# TYPE crmessenger_connector_undelivered gauge\n";
        let e = exposed(page);
        for n in [
            "crmessenger_connector_messages_in_total",
            "crmessenger_connector_lag_seconds_bucket",
            "crmessenger_connector_undelivered",
        ] {
            assert!(e.contains(n), "{n}");
        }
        assert!(!e.contains("crmessenger_connector_undelivered_total"));
    }
}
