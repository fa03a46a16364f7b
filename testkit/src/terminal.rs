//! A program in a terminal, as a person runs it: a detached tmux session of its
//! own (a private server socket), whose screen is read back as text.

use std::path::Path;
use std::process::Command;

/// A tmux session running one command; the server is killed when dropped.
pub struct Terminal {
    socket: String,
}

impl Terminal {
    /// Runs `program args…` in a `cols`×`rows` terminal with `env` added; when it
    /// ends the terminal shows `[exit CODE]` and stays open to be read.
    pub fn start(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        cols: u16,
        rows: u16,
    ) -> std::io::Result<Terminal> {
        let socket =
            format!("crmn-{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos());
        let quoted: Vec<String> = std::iter::once(program.display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .map(|a| quote(&a))
            .collect();
        let exports: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
        let script = format!("env {} {}; echo \"[exit $?]\"; sleep 3600", exports.join(" "), quoted.join(" "));
        let status = Command::new("tmux")
            .args(["-u", "-L", &socket, "new-session", "-d", "-x", &cols.to_string(), "-y", &rows.to_string()])
            .args(["sh", "-c", &script])
            .env("LANG", "C.UTF-8")
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("tmux new-session failed: {status}")));
        }
        Ok(Terminal { socket })
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        Command::new("tmux")
            .args(["-u", "-L", &self.socket, "capture-pane", "-p"])
            .env("LANG", "C.UTF-8")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Types `text` and Enter, as a person at the keyboard.
    pub fn type_line(&self, text: &str) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "send-keys", "-l", text]).status();
        let _ = Command::new("tmux").args(["-L", &self.socket, "send-keys", "Enter"]).status();
    }

    /// The program's exit code, once it has ended.
    pub fn exit_code(&self) -> Option<i32> {
        let screen = self.screen();
        let at = screen.rfind("[exit ")?;
        screen[at + 6..].split(']').next()?.parse().ok()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
