//! The image config, read from the project's `Containerfile`.
//!
//! The Containerfile is the one description of the image: Docker, Buildah or Podman
//! build it as it is, and `ocimage` reads the same file for the config it writes. So
//! that both ways give the same image, only what both can agree on is accepted —
//! `FROM scratch`, one `COPY <dir> /`, `ARG`, `ENV`, `USER`, `WORKDIR`, `LABEL`, and
//! `ENTRYPOINT`/`CMD` in JSON form — one instruction per line; anything else is an
//! error rather than something silently left out of one of the two images.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// What the Containerfile says about the image.
#[derive(Debug, Default, PartialEq)]
pub struct Containerfile {
    /// The directory (relative to the build context) copied to `/`.
    pub copy_from: String,
    /// `KEY=value` in order of first definition.
    pub env: Vec<String>,
    /// `USER`, as written.
    pub user: Option<String>,
    /// `WORKDIR`.
    pub working_dir: Option<String>,
    /// `ENTRYPOINT` (exec form).
    pub entrypoint: Option<Vec<String>>,
    /// `CMD` (exec form).
    pub cmd: Option<Vec<String>>,
    /// `LABEL`s.
    pub labels: BTreeMap<String, String>,
}

/// Parses `text` with the given build arguments (`--build-arg NAME=value`).
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Result<Containerfile> {
    let mut out = Containerfile::default();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut from = false;
    for (number, line) in text.lines().enumerate() {
        let at = || format!("Containerfile line {}", number + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.ends_with('\\') {
            bail!("{}: line continuations are not supported; write one instruction per line", at());
        }
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let instruction = instruction.to_ascii_uppercase();
        // Docker scopes an ARG declared before FROM to the FROM line only.
        if !from && instruction != "FROM" {
            bail!("{}: {instruction} before FROM", at());
        }
        match instruction.as_str() {
            "FROM" if rest == "scratch" && !from => from = true,
            "FROM" => bail!("{}: only one `FROM scratch` is supported", at()),
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((name, default)) => (name, Some(unquote(default).with_context(at)?)),
                    None => (rest, None),
                };
                let value = build_args.get(name).cloned().or(default);
                let value = value.with_context(|| format!("{}: build argument {name} has no value", at()))?;
                args.insert(name.to_string(), value);
            }
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                match parts.as_slice() {
                    [from_dir, "/"] if out.copy_from.is_empty() && !from_dir.starts_with("--") => {
                        out.copy_from = from_dir.trim_end_matches('/').to_string();
                    }
                    _ => bail!("{}: only one `COPY <dir>/ /`, without options, is supported", at()),
                }
            }
            "ENV" => {
                for (key, value) in pairs(rest, &args).with_context(at)? {
                    let entry = format!("{key}={value}");
                    match out.env.iter_mut().find(|e| e.split_once('=').map(|(k, _)| k) == Some(key.as_str())) {
                        Some(existing) => *existing = entry,
                        None => out.env.push(entry),
                    }
                }
            }
            "LABEL" => out.labels.extend(pairs(rest, &args).with_context(at)?),
            "USER" => out.user = Some(substitute(rest, &args).with_context(at)?),
            "WORKDIR" => out.working_dir = Some(substitute(rest, &args).with_context(at)?),
            "ENTRYPOINT" => out.entrypoint = Some(exec_form(rest).with_context(at)?),
            "CMD" => out.cmd = Some(exec_form(rest).with_context(at)?),
            other => bail!("{}: {other} is not supported here", at()),
        }
    }
    if !from || out.copy_from.is_empty() {
        bail!("the Containerfile needs `FROM scratch` and one `COPY <dir>/ /`");
    }
    Ok(out)
}

/// `key=value key2="value 2"` after substitution.
fn pairs(text: &str, args: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').context("expected key=value")?;
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!("expected key=value, found {rest:?}");
        }
        let (raw, after) = if after.starts_with('"') {
            // The closing quote is the first one not escaped by a backslash.
            let bytes = after.as_bytes();
            let mut end = 1;
            while end < bytes.len() && (bytes[end] != b'"' || bytes[end - 1] == b'\\') {
                end += 1;
            }
            if end == bytes.len() {
                bail!("unterminated quote in {rest:?}");
            }
            after.split_at(end + 1)
        } else {
            after.split_at(after.find(char::is_whitespace).unwrap_or(after.len()))
        };
        out.push((key.to_string(), substitute(&unquote(raw)?, args)?));
        rest = after.trim_start();
    }
    Ok(out)
}

/// A double-quoted value (with `\"` and `\\` escapes) or a bare one.
fn unquote(raw: &str) -> Result<String> {
    match raw.strip_prefix('"') {
        Some(inner) => {
            let inner = inner.strip_suffix('"').context("unterminated quote")?;
            Ok(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
        }
        None => Ok(raw.to_string()),
    }
}

/// Replaces `${NAME}` and `$NAME` by the value of build argument `NAME`.
fn substitute(text: &str, args: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => braced.split_once('}').context("unterminated ${")?,
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                after.split_at(end)
            }
        };
        if name.is_empty() {
            bail!("a lone $ in {text:?}");
        }
        out.push_str(args.get(name).with_context(|| format!("${name} is not a declared ARG"))?);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// `["a", "b"]`: the exec form, the only one that needs no shell.
fn exec_form(text: &str) -> Result<Vec<String>> {
    serde_json::from_str::<Vec<String>>(text)
        .with_context(|| format!("{text:?} is not the JSON (exec) form; the image has no shell"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_the_supported_instructions() {
        let text = r#"
# comment
FROM scratch
ARG VERSION
ARG VARIANT=default
COPY rootfs/ /
ENV PATH=/usr/local/bin
ENV A=1 B="two words"
USER 65532:65532
CMD ["/usr/local/bin/crmessenger-operator"]
LABEL org.opencontainers.image.version="${VERSION}" io.crmessenger.variant=$VARIANT
LABEL quoted="say \"hi\""
"#;
        let parsed = parse(text, &args(&[("VERSION", "1.2.3")])).unwrap();
        assert_eq!(parsed.copy_from, "rootfs");
        assert_eq!(parsed.env, ["PATH=/usr/local/bin", "A=1", "B=two words"]);
        assert_eq!(parsed.user.as_deref(), Some("65532:65532"));
        assert_eq!(parsed.entrypoint, None);
        assert_eq!(parsed.cmd, Some(vec!["/usr/local/bin/crmessenger-operator".to_string()]));
        assert_eq!(parsed.labels["org.opencontainers.image.version"], "1.2.3");
        assert_eq!(parsed.labels["io.crmessenger.variant"], "default");
        assert_eq!(parsed.labels["quoted"], "say \"hi\"");
    }

    #[test]
    fn refuses_what_one_of_the_two_builds_would_read_differently() {
        let base = "FROM scratch\nCOPY rootfs/ /\n";
        for extra in [
            "RUN true",
            "CMD /usr/local/bin/crmessenger-operator",
            "COPY --chown=1:1 other/ /",
            "LABEL a=\"open",
            "LABEL a=$MISSING",
            "ENV A=1 \\",
        ] {
            assert!(parse(&format!("{base}{extra}\n"), &BTreeMap::new()).is_err(), "{extra} was accepted");
        }
        assert!(parse("FROM debian\nCOPY rootfs/ /\n", &BTreeMap::new()).is_err());
        assert!(parse("ARG VERSION\nFROM scratch\nCOPY rootfs/ /\n", &BTreeMap::new()).is_err());
    }
}
