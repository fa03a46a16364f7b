//! The binary as kubectl runs it: its commands, and clear errors without a cluster.

use std::process::Command;

fn plugin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubectl-crmessenger"))
}

#[test]
fn help_names_every_command() {
    let out = plugin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for command in ["status", "login", "dead-letters", "replay", "doctor"] {
        assert!(text.contains(command), "{command} in:\n{text}");
    }
}

#[test]
fn without_a_reachable_cluster_it_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    // A cluster on a loopback port nothing listens on.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: shop}}]\n\
         current-context: x\n",
    )
    .unwrap();
    let out = plugin().args(["status"]).env("KUBECONFIG", &kubeconfig).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: list MessengerAccounts"), "{err}");
    // A dead letter id that is not one is refused before anything is sent.
    let out = plugin().args(["replay", "tg", "--id", "nonsense"]).env("KUBECONFIG", &kubeconfig).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("\"nonsense\" is not a dead letter id"), "{err}");
}
