//! The sidecar at the pod's edge, served as in the pod (every interface) in front of
//! a real admin port: the login page, its form and the status answer only what
//! `kubectl port-forward` looks like (a loopback peer, a loopback `Host`, a
//! same-origin form); a peer in another network namespace — made by the test, so
//! the refusal is by a real address, not a mock — gets 403 and its form never
//! reaches the messenger, while the probes stay open. Nothing is cached, and the
//! sidecar no longer serves metrics. Needs root (network namespaces).

use crmessenger_connector::admin::{AccountHandle, Admin};
use crmessenger_connector::http::{Limits, serve};
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::sidecar::Sidecar;
use crmessenger_connector::state::StateCell;
use crmessenger_connector::store::Store;
use crmessenger_fake_messenger::{Options, ScriptedMessenger};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A network namespace of the test's own, joined to this one by a veth pair
/// (10.213.N.1 here, 10.213.N.2 there); removed on drop, also after a failure.
struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

impl Netns {
    fn create() -> Result<Self, String> {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let octet = u8::from_str_radix(&tag[..2], 16).unwrap_or(1);
        let ns = Netns {
            name: format!("crm-edge-{tag}"),
            host_if: format!("crmh{tag}"),
            host_ip: Ipv4Addr::new(10, 213, octet, 1),
        };
        ip(&["netns", "add", &ns.name])?;
        let peer_if = format!("crmn{tag}");
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &peer_if, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &format!("10.213.{octet}.2/30"), "dev", &peer_if])?;
        ip(&["-n", &ns.name, "link", "set", &peer_if, "up"])?;
        Ok(ns)
    }

    /// `raw` sent from inside the namespace to `port` on this side of the pair.
    fn request(&self, port: u16, raw: String) -> Reply {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.name);
        let to = SocketAddr::from((self.host_ip, port));
        std::thread::spawn(move || {
            // A network namespace is per thread: only this one moves.
            let ns = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns on a valid descriptor changes only this thread's namespace.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            send(to, &raw)
        })
        .join()
        .expect("the request thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its end of the pair, and so the pair.
        let _ = ip(&["netns", "delete", &self.name]);
        let _ = ip(&["link", "delete", &self.host_if]);
    }
}

/// Status, head (lowercased) and body of a response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

fn send(to: SocketAddr, raw: &str) -> Reply {
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_lowercase(), body: body.to_string() }
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

fn post(path: &str, host: &str, origin: Option<&str>, form: &str) -> String {
    post_typed(path, host, origin, "application/x-www-form-urlencoded", form)
}

fn json_post(path: &str, host: &str, origin: Option<&str>, body: &str) -> String {
    post_typed(path, host, origin, "application/json", body)
}

fn post_typed(path: &str, host: &str, origin: Option<&str>, content_type: &str, body: &str) -> String {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_answers_only_port_forward() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A messenger that logs in by code and then password, as Telegram does.
    let messenger = ScriptedMessenger::start(Options {
        logged_in: false,
        login_code: Some("24680".into()),
        password: Some("correct horse".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("edge.db").display()), 1).await.unwrap();
    // This connector holds the account's lock (only then does its page take codes).
    let state = Arc::new(StateCell::new("shop/tg"));
    state.update(|s| s.holds_lock = true);
    let admin = Admin {
        accounts: Arc::new(std::sync::RwLock::new(vec![AccountHandle {
            key: "shop/tg".into(),
            state: state.clone(),
            messenger: Arc::new(
                crmessenger_connector::messenger::scripted::Scripted::new(&messenger.base_url()).unwrap(),
            ),
        }])),
        store,
        metrics: Arc::new(Metrics::default()),
    };
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin_listener.local_addr().unwrap());
    tokio::spawn(serve(admin_listener, admin.router(), Limits::default()));
    // As in the pod: the sidecar listens on every interface.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, Sidecar::new(&admin_url).unwrap().router(), Limits::default()));

    let ns = Netns::create().unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let here = format!("127.0.0.1:{port}");
    let mut replies = Vec::new();
    let mut check = |what: &str, reply: Reply, status: u16| {
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        replies.push((what.to_string(), reply));
    };

    // From another network namespace: refused, even with a loopback Host; the
    // probe answers; the right code sent from there reaches nobody.
    let from_ns = |raw: String| {
        let ns = &ns;
        tokio::task::block_in_place(|| ns.request(port, raw))
    };
    for path in ["/login", "/login/qr.svg", "/login/qr.png", "/status", "/login/state", "/dead-letters"] {
        let reply = from_ns(get(path, &here));
        assert!(reply.body.contains("port-forward"), "{path}: the refusal says how to get in: {reply:?}");
        check(&format!("GET {path} from the network"), reply, 403);
    }
    check("POST /login from the network", from_ns(post("/login", &here, None, "code=24680")), 403);
    check("POST /replay from the network", from_ns(json_post("/replay", &here, None, "{}")), 403);
    check("GET /healthz from the network", from_ns(get("/healthz", &here)), 200);
    check("GET /metrics from the network", from_ns(get("/metrics", &here)), 404);

    // Over loopback, as port-forward delivers it.
    let locally = |raw: String| tokio::task::block_in_place(|| send(local, &raw));
    let page = locally(get("/login", &format!("localhost:{port}")));
    assert!(page.body.contains("shop/tg"), "{page:?}");
    check("GET /login over loopback", page, 200);
    check("GET /status over loopback", locally(get("/status", &here)), 200);
    check("GET /readyz over loopback", locally(get("/readyz", &here)), 200);
    // What `kubectl crmessenger` reads: the login state and the dead letters as
    // JSON, and the replay (a bad id is refused by name; another site cannot post).
    let state_json = locally(get("/login/state", &here));
    assert!(state_json.body.contains(r#""account":"shop/tg""#), "{state_json:?}");
    check("GET /login/state over loopback", state_json, 200);
    let dead = locally(get("/dead-letters", &here));
    assert!(dead.body.contains(r#""deadLetters":[]"#), "{dead:?}");
    check("GET /dead-letters over loopback", dead, 200);
    let bad = locally(json_post("/replay", &here, None, r#"{"ids":["inbox/x"]}"#));
    assert!(bad.body.contains("\"inbox/x\" is not a dead letter id"), "{bad:?}");
    check("POST /replay with a bad id", bad, 400);
    check(
        "POST /replay from a foreign origin",
        locally(json_post("/replay", &here, Some("http://crm.example.com"), "{}")),
        403,
    );
    let replayed = locally(json_post("/replay", &here, None, "{}"));
    assert!(replayed.body.contains(r#""replayed":0"#), "{replayed:?}");
    check("POST /replay over loopback", replayed, 200);
    check("GET /metrics over loopback", locally(get("/metrics", &here)), 404);
    // A name that resolves to loopback for someone else's page (DNS rebinding).
    check("GET /login for a foreign Host", locally(get("/login", &format!("crm.example.com:{port}"))), 403);
    // The code sent from the other namespace never arrived: a password alone is
    // refused by the messenger, which still waits for the code.
    let reply = locally(post("/login", &here, None, "password=correct+horse"));
    assert!(reply.body.contains("PHONE_CODE_INVALID"), "{reply:?}");
    check("POST the password before the code", reply, 422);
    // A form another site's page posts: refused before it is read.
    let foreign = locally(post("/login", &here, Some("http://crm.example.com"), "code=24680"));
    check("POST /login from a foreign origin", foreign, 403);
    let null = locally(post("/login", &here, Some("null"), "code=24680"));
    check("POST /login from an opaque origin", null, 403);
    // The page's own form: same origin; then the password (a client without Origin).
    // A connector waiting for the account's lock takes no code: only the holder
    // talks to the messenger.
    state.update(|s| s.holds_lock = false);
    check("POST the code while waiting for the lock", locally(post("/login", &here, None, "code=24680")), 409);
    state.update(|s| s.holds_lock = true);
    let own = locally(post("/login", &here, Some(&format!("http://{here}")), "code=24680"));
    check("POST the code from the page", own, 303);
    check("POST the password", locally(post("/login", &here, None, "password=correct+horse")), 303);

    for (what, reply) in &replies {
        assert!(reply.head.contains("\r\ncache-control: no-store"), "{what}: {}", reply.head);
        assert!(reply.head.contains("\r\nx-content-type-options: nosniff"), "{what}: {}", reply.head);
    }
    drop(ns);
}
