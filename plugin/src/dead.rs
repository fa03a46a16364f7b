//! `dead-letters` and `replay`: through the sidecar, never the database.

use serde_json::Value;
use std::fmt::Write;

/// The dead letters of a sidecar `/dead-letters` answer as a table.
pub fn render(v: &Value, now_ms: i64) -> String {
    let list = v["deadLetters"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return format!("{}: no dead letters.\n", v["account"].as_str().unwrap_or_default());
    }
    let mut out = format!("{:<14} {:<8} {:<22} REASON\n", "ID", "AGE", "CHAT");
    for d in &list {
        let age = (now_ms - d["queuedMs"].as_i64().unwrap_or(now_ms)).max(0) / 1000;
        let age = match age {
            0..3600 => format!("{}m", age / 60),
            3600..86400 => format!("{}h", age / 3600),
            _ => format!("{}d", age / 86400),
        };
        let reason: String = d["reason"].as_str().unwrap_or_default().chars().take(160).collect();
        let _ = writeln!(
            out,
            "{:<14} {:<8} {:<22} {}",
            d["id"].as_str().unwrap_or_default(),
            age,
            d["chatId"].as_str().unwrap_or_default(),
            reason
        );
    }
    let _ = writeln!(out, "\nReplay them all with `kubectl crmessenger replay ACCOUNT`, or some with --id ID.");
    out
}
