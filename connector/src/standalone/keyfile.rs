//! The session key of `standalone`: given, or generated once into the data
//! directory (mode 0600) and read from there afterwards.

use super::StandaloneSettings;
use crate::store::crypto::SessionKey;
use anyhow::Context;

/// The session key `s` names, or the one in the data directory (generated when absent).
pub fn session_key(s: &StandaloneSettings) -> anyhow::Result<SessionKey> {
    if let Some(text) = &s.session_key {
        return SessionKey::parse(text).map_err(|e| anyhow::anyhow!("--session-key: {e}"));
    }
    let path = s.data_dir.join("session.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => SessionKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let (key, text) = SessionKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("create {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a session key; keep it with the database");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}
