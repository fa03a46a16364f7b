//! A real PostgreSQL server for tests: one per test binary, on a random loopback
//! port, in a temporary directory, killed when the test process exits. Each test
//! takes a database of its own with [`Postgres::database`].
//!
//! The binaries come from `$CRMESSENGER_POSTGRES_BIN` or the newest
//! `/usr/lib/postgresql/*/bin` (`tools/test.sh` installs the Debian package when it
//! is missing). PostgreSQL refuses to run as root, so under root the server runs as
//! the `postgres` user.

use crate::controlplane::free_port;
use crate::process::{spawn_tied, start_watchdog};
use anyhow::{Context, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running PostgreSQL server.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    _server: Mutex<Child>,
}

impl Postgres {
    /// The server shared by every test of this test binary, started on first use.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Postgres::start().map_err(|e| format!("{e:#}"))) {
            Ok(pg) => pg,
            Err(e) => panic!("the test PostgreSQL did not start: {e}"),
        }
    }

    /// Initialises a cluster in a fresh temporary directory and starts the server.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(None, false)
    }

    /// A server with PostgreSQL's durable defaults (`fsync`, `synchronous_commit`
    /// and `full_page_writes` on), for benchmarks whose figures must be what a
    /// production server commits.
    pub fn start_durable() -> anyhow::Result<Self> {
        Self::start_inner(None, true)
    }

    /// Like [`Postgres::start`], also listening on the host end of a real node's
    /// link and trusting connections from the node (pods reach it through a
    /// Service, so their packets come from the node's address).
    pub fn start_for_node(link: &crate::node::Link) -> anyhow::Result<Self> {
        Self::start_inner(Some(link), false)
    }

    fn start_inner(link: Option<&crate::node::Link>, durable: bool) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("crmessenger-pg-").tempdir()?.keep();
        start_watchdog(&dir, false)?;
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { Some(postgres_user()?) } else { None };
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        }
        let mut init = Command::new(bin.join("initdb"));
        init.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        as_user(&mut init, user);
        let out = init.stdin(Stdio::null()).output().context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        let mut listen = "127.0.0.1".to_string();
        if let Some(link) = link {
            listen = format!("{listen},{}", link.host_ip);
            use std::io::Write;
            let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf"))?;
            writeln!(hba, "host all all {}/32 trust", link.node_ip)?;
        }
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))?;
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string()).arg("-k").arg(&dir);
        cmd.arg("-c").arg(format!("listen_addresses={listen}"));
        // Tests: fast, not durable — a crash of this server may lose its last
        // commits. The tests kill connectors, never this server, so durability is
        // not what they check; figures taken against it are not durable commit
        // rates. Benchmarks start a durable server (PostgreSQL's defaults).
        let fast = ["fsync=off", "synchronous_commit=off", "full_page_writes=off"];
        for setting in
            ["max_connections=400", "shared_buffers=64MB"].into_iter().chain(fast.into_iter().filter(|_| !durable))
        {
            cmd.arg("-c").arg(setting);
        }
        as_user(&mut cmd, user);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let server = spawn_tied(cmd, &dir.join("pids")).context("start postgres")?;
        let pg = Postgres { dir, bin, port, user, _server: Mutex::new(server) };
        pg.wait_ready()?;
        Ok(pg)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not become ready:\n{}", self.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a fresh database and returns its URL.
    pub fn database(&self, prefix: &str) -> anyhow::Result<String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
            .to_lowercase()
            .replace('-', "_");
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", &name])
            .output()
            .context("run createdb")?;
        if !out.status.success() {
            bail!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(self.url(&name))
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The scratch directory (data and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server runs as another user than this process.
    pub fn runs_as_other_user(&self) -> bool {
        self.user.is_some()
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let out = Command::new("id").args(["-u", "postgres"]).output().context("run id")?;
    let gid = Command::new("id").args(["-g", "postgres"]).output().context("run id")?;
    if !out.status.success() || !gid.status.success() {
        bail!("running as root, and there is no `postgres` user to run PostgreSQL as");
    }
    Ok((String::from_utf8(out.stdout)?.trim().parse()?, String::from_utf8(gid.stdout)?.trim().parse()?))
}

/// The directory of the PostgreSQL server binaries.
pub fn binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CRMESSENGER_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").exists())
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server found (set CRMESSENGER_POSTGRES_BIN, or install the `postgresql` package; tools/test.sh does)"
        ),
    }
}
