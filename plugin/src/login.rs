//! `kubectl crmessenger login ACCOUNT`: draws the account's current QR code in
//! the terminal and redraws it as it renews, asks for the login code or the
//! two-step password when the messenger wants one, and returns once the account
//! is signed in.

use crate::qr::{self, Terminal};
use crate::sidecar::Sidecar;
use anyhow::{Result, bail};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// How often the login state is read.
const POLL: Duration = Duration::from_millis(700);

/// What the login needs next, from the sidecar's `/login/state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Scan this code.
    Qr(String),
    /// Type the code the messenger sent.
    Code,
    /// Type the two-step password.
    Password,
    /// Signed in, as this name.
    Done(String),
    /// Nothing to do yet (the connector is starting, or the session ended and a
    /// new code is on its way), with why.
    Wait(String),
}

/// The step a `/login/state` answer asks for.
pub fn step_of(v: &Value) -> Step {
    let login = &v["login"];
    match login["state"].as_str().unwrap_or_default() {
        "qr" => match login["code"].as_str() {
            Some(code) => Step::Qr(code.to_string()),
            None => Step::Wait("a QR code without content".into()),
        },
        "code_required" => Step::Code,
        "password_required" => Step::Password,
        "logged_in" => {
            let id = &login["identity"];
            let who =
                id["username"].as_str().map(|u| format!("@{u}")).or_else(|| id["name"].as_str().map(str::to_string));
            Step::Done(who.unwrap_or_default())
        }
        // The connector's word before it has asked the messenger (or right after a
        // code or password went in).
        "logged_out" if login["reason"] == "starting" => Step::Wait("the connector is asking the messenger".into()),
        "logged_out" => Step::Wait(format!("the session ended: {}", login["reason"].as_str().unwrap_or("unknown"))),
        other => Step::Wait(format!("login state {other:?}")),
    }
}

/// The escape sequence that clears the screen and homes the cursor.
const CLEAR: &str = "\x1b[2J\x1b[H";

/// Runs the login until signed in or `timeout`; prints to `out`, reads answers
/// from standard input (the password without echo when it is a terminal).
pub async fn run(sidecar: &Sidecar, account: &str, terminal: Terminal, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut shown: Option<Step> = None;
    let mut out = std::io::stdout();
    loop {
        if started.elapsed() > timeout {
            bail!("{account} is not signed in after {}s", timeout.as_secs());
        }
        let step = step_of(&sidecar.get("/login/state").await?);
        let changed = shown.as_ref() != Some(&step);
        match &step {
            Step::Done(who) => {
                writeln!(out, "{account} is signed in as {who}.")?;
                return Ok(());
            }
            Step::Qr(code) if changed => {
                let drawn = qr::lines(code, terminal).map_err(anyhow::Error::msg)?;
                write!(out, "{CLEAR}")?;
                writeln!(out, "{account}: scan this code with the messenger app on your phone")?;
                writeln!(out, "(Telegram: Settings → Devices → Link Desktop Device). It renews itself.")?;
                writeln!(out)?;
                for line in drawn {
                    writeln!(out, "{line}")?;
                }
                writeln!(out)?;
                writeln!(out, "The same page in a browser, while this runs: {}", sidecar.url("/login"))?;
                out.flush()?;
            }
            Step::Code if changed => {
                let code = ask(&format!("{account}: the login code the messenger sent: "), false)?;
                sidecar.post_login("code", code.trim()).await?;
            }
            Step::Password if changed => {
                let password = ask(&format!("{account}: the two-step verification password: "), true)?;
                sidecar.post_login("password", &password).await?;
            }
            Step::Wait(why) if changed => {
                writeln!(out, "{account}: waiting ({why})")?;
            }
            _ => {}
        }
        shown = Some(step);
        tokio::time::sleep(POLL).await;
    }
}

fn ask(prompt: &str, secret: bool) -> Result<String> {
    let mut out = std::io::stdout();
    if secret {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    write!(out, "{prompt}")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_login_state_asks_for_its_step() {
        let s = |login: Value| step_of(&json!({ "account": "a/b", "login": login }));
        assert_eq!(
            s(json!({"state": "qr", "code": "tg://login?token=x", "expires_at_ms": 1})),
            Step::Qr("tg://login?token=x".into())
        );
        assert_eq!(s(json!({"state": "code_required"})), Step::Code);
        assert_eq!(s(json!({"state": "password_required"})), Step::Password);
        assert_eq!(
            s(json!({"state": "logged_in", "identity": {"id": "1", "name": "Shop", "username": "shop"}})),
            Step::Done("@shop".into())
        );
        assert_eq!(
            s(json!({"state": "logged_in", "identity": {"id": "1", "name": "Shop"}})),
            Step::Done("Shop".into())
        );
        assert!(
            matches!(s(json!({"state": "logged_out", "reason": "revoked"})), Step::Wait(w) if w.contains("revoked"))
        );
    }
}
