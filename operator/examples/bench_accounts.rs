//! Benchmark (not part of the test suite): applies N MessengerAccounts (default
//! 1000) with 10 bindings and one policy to a fresh local control plane, runs the
//! operator binary against it, and prints the time until every StatefulSet exists
//! and every account's status was observed, the operator's peak RSS, and its API
//! requests per account.
//!
//!     cargo build --release -p crmessenger-operator --examples --bins
//!     target/release/examples/bench_accounts 1000
//!
//! `BENCH_CONCURRENCY` sets the operator's `--concurrency` (default 8).

use crmessenger_testkit::ControlPlane;
use std::io::Write;
use std::time::{Duration, Instant};

/// kubectl processes applying the accounts at once.
const APPLIERS: usize = 4;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let bindings = 10;
    let cp = ControlPlane::start()?;
    cp.install_crds()?;
    let operator = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("crmessenger-operator"))
        .ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let port = crmessenger_testkit::controlplane::free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(&operator);
    let concurrency = std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "8".into());
    // Connectors never run here (kwok), but without a database the operator would
    // create none of them.
    cp.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "bench-db",
        "--from-literal=dsn=postgres://bench@127.0.0.1:9/none",
    ])?;
    cmd.args(["run", "--leader-election=false", "--admin-addr", &admin, "--concurrency", &concurrency])
        .args(["--connector-image", "example.invalid/crmessenger:bench", "--database-secret", "bench-db"])
        .env("RUST_LOG", "warn");
    let pid = cp.spawn_logged("operator", cmd)?;
    cp.kubectl_ok(&["create", "namespace", "bench"])?;
    std::thread::sleep(Duration::from_secs(2));

    let mut yaml = String::new();
    yaml.push_str("apiVersion: crmessenger.io/v1alpha1\nkind: SyncPolicy\nmetadata: { name: p }\nspec: {}\n");
    for b in 0..bindings {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: amo-{b} }}\nstringData: {{ long_lived_token: t }}\n---\napiVersion: crmessenger.io/v1alpha1\nkind: CrmBinding\nmetadata: {{ name: b{b} }}\nspec:\n  accountSelector: {{ matchLabels: {{ shard: s{b} }} }}\n  policyRef: {{ name: p }}\n  crm: {{ type: amocrm, amocrm: {{ baseUrl: \"https://b{b}.amocrm.ru\", credentialsSecret: {{ name: amo-{b} }} }} }}\n"
        ));
    }
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: crmessenger.io/v1alpha1\nkind: MessengerAccount\nmetadata: {{ name: a{i}, labels: {{ shard: s{} }} }}\nspec: {{ provider: telegram, telegram: {{ apiCredentials: {{ secretName: tg }} }} }}\n",
            i % bindings
        ));
    }
    // Applied as GitOps tools do: several appliers at once (the policy and bindings
    // first), since one kubectl applies objects one after the other.
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    let (head, accounts) = docs.split_at(1 + 2 * bindings);
    let mut files = vec![head.join("\n---\n")];
    for chunk in accounts.chunks(accounts.len().div_ceil(APPLIERS).max(1)) {
        files.push(chunk.join("\n---\n"));
    }
    let paths: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = cp.dir().join(format!("bench-{i}.yaml"));
            std::fs::write(&path, text).map(|_| path.display().to_string())
        })
        .collect::<Result<_, _>>()?;
    let before = metric(&admin, "crmessenger_operator_api_requests_total");
    let started = Instant::now();
    cp.kubectl_ok(&["apply", "--server-side", "-n", "bench", "-f", &paths[0]])?;
    let cp = &cp;
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths[1..]
            .iter()
            .map(|p| scope.spawn(move || cp.kubectl_ok(&["apply", "--server-side", "-n", "bench", "-f", p]).map(drop)))
            .collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("an applier panicked"))?)
    })?;
    let applied = started.elapsed();
    loop {
        let sts = cp.kubectl_ok(&["get", "statefulsets", "-n", "bench", "-o", "name"])?.lines().count();
        let observed = cp
            .kubectl_ok(&[
                "get",
                "messengeraccounts",
                "-n",
                "bench",
                "-o",
                "jsonpath={range .items[*]}{.status.observedGeneration}/{.metadata.generation}{\"\\n\"}{end}",
            ])?
            .lines()
            .filter(|l| l.split_once('/').is_some_and(|(a, b)| a == b))
            .count();
        eprintln!("{:>6.1}s  statefulsets {sts}/{n}  statuses {observed}/{n}", started.elapsed().as_secs_f64());
        if sts >= n && observed >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("gave up after 15 minutes");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let converged = started.elapsed();
    let requests = metric(&admin, "crmessenger_operator_api_requests_total") - before;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?").to_string();
    println!("accounts: {n}, bindings: {bindings}");
    println!("kubectl apply took: {:.1}s", applied.as_secs_f64());
    println!("all children and statuses after: {:.1}s", converged.as_secs_f64());
    println!("operator peak RSS: {}", hwm.trim_start_matches("VmHWM:").trim());
    println!("operator API requests: {requests:.0} ({:.1} per account)", requests / n as f64);
    Ok(())
}

fn metric(admin: &str, name: &str) -> f64 {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(admin) else { return 0.0 };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}
