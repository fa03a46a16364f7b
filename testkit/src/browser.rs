//! Headless Chromium (Debian's `chromium`) for looking at a page as a person would:
//! its rendered DOM, or a screenshot.

use std::path::Path;
use std::process::{Command, Output};

/// Whether Debian's `chromium` is installed.
pub fn available() -> bool {
    Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs headless Chromium on `url` with `extra` arguments (`--dump-dom`,
/// `--screenshot=PATH`), in a throwaway profile, with everything that would reach
/// off this machine (updates, sync, background fetches, QUIC) turned off.
pub fn run(url: &str, extra: &[String]) -> std::io::Result<Output> {
    let profile = tempfile::tempdir()?;
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
}

/// Saves a screenshot of `url` at `path` (PNG); fails with Chromium's output when
/// no screenshot was made.
pub fn screenshot(url: &str, path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let out = run(url, &[format!("--screenshot={}", path.display())])?;
    if !path.exists() {
        anyhow::bail!("chromium made no screenshot of {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
