//! Child processes that die with the test process, however it ends.
//!
//! Two mechanisms, because a `static` is never dropped:
//! - every child is spawned from one long-lived thread with a parent-death signal
//!   (`PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so the spawning
//!   thread must outlive all tests; it lives until the process exits);
//! - a detached watchdog shell polls the test process and, once it is gone, kills
//!   any child still listed and removes the scratch directory.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this point is only reached at exit;
                // park rather than return so the children's parent thread stays alive.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the testkit spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it receives SIGKILL when this process exits. Its pid is
/// appended to `pid_file`, which the watchdog reads.
pub fn spawn_tied(mut cmd: Command, pid_file: &Path) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    let child = rx.recv().map_err(|_| io::Error::other("spawner thread is gone"))??;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(pid_file)?;
    writeln!(f, "{}", child.id())?;
    Ok(child)
}

/// Starts the watchdog for `dir`: once this process is gone it kills every pid in
/// `dir/pids`, runs `dir/cleanup.sh` if there is one (a real node's) and, unless
/// `keep` is set, removes `dir`.
pub fn start_watchdog(dir: &Path, keep: bool) -> io::Result<()> {
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
if [ -f "$2/pids" ]; then kill -9 $(cat "$2/pids") 2>/dev/null; fi
sleep 0.5
if [ -f "$2/cleanup.sh" ]; then sh "$2/cleanup.sh"; fi
if [ "$3" != keep ]; then rm -rf "$2"; fi
"#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg("testkit-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(if keep { "keep" } else { "remove" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe. A new session keeps the watchdog out of
    // the terminal's process group, so Ctrl-C on the test run does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(drop)
}

/// A logged child process tied to the test process (see [`spawn_tied`]), for tests
/// that kill and restart what they run.
pub struct Proc {
    name: String,
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output in `dir/<name>.log` (appended, so restarts keep
    /// the earlier output); its pid goes to `dir/pids`.
    pub fn start(name: &str, mut cmd: Command, dir: &Path) -> io::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = spawn_tied(cmd, &dir.join("pids"))?;
        Ok(Proc { name: name.to_string(), child, log })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to `timeout` for the exit. `None` if it did not exit.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, headed by the process name.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        format!("--- {}:\n{}", self.name, all[all.len().saturating_sub(lines)..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A binary of this workspace, built by `cargo test --workspace` beside the test
/// executables (`target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe.parent().and_then(Path::parent).map(|d| d.join(name)).expect("a target directory");
    assert!(path.exists(), "{} is not built; run the tests with `cargo test --workspace`", path.display());
    path
}

/// The path of the workspace binary `name` of `package`, built beside the running
/// test binary (`target/<profile>/NAME`): `cargo test --workspace` builds it for its
/// package's integration tests. (Not built here: the running `cargo test` may hold
/// the build directory's lock.)
pub fn workspace_binary(package: &str, name: &str) -> io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| io::Error::other("no target directory"))?;
    let path = profile_dir.join(name);
    if !path.exists() {
        return Err(io::Error::other(format!(
            "{} is not built: run `cargo build -p {package} --bin {name}` first (cargo test --workspace builds it)",
            path.display()
        )));
    }
    Ok(path)
}
