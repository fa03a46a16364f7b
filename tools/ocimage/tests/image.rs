//! The project image as `tools/image.sh --test-build` makes it: reproducible, no
//! shell, nothing but the binaries and what they load, runs as nonroot 65532 by
//! absolute path with only `/tmp` writable, its binaries run on the libraries it
//! carries (in a chroot, and under runc with a read-only root), and the
//! Containerfile built by Buildah gives the same files and config.
//!
//! The image takes the test build's binaries, so under the project's test command
//! (`tools/test.sh`: `cargo test --workspace --features
//! crmessenger-connector/whatsapp-web`) nothing more is compiled; run alone, the
//! script first compiles that test build.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const OPERATOR: &str = "/usr/local/bin/crmessenger-operator";
const CONNECTOR: &str = "/usr/local/bin/crmessenger-connector";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The target directory this test was built into (`TARGET/debug/deps/image-…`), so
/// the script finds the test build that is running.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors().nth(3).expect("target directory").to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where `tool` is on this process's PATH (a child given another PATH would look there).
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// One image layout read back: its digest, config and layer.
struct Image {
    out: PathBuf,
    digest: String,
    config: Value,
    /// `tar -tv` of the layer: path → (mode string, owner, size, link target).
    listing: BTreeMap<String, (String, String, u64, String)>,
    /// The layer extracted (as root: with its owners).
    rootfs: PathBuf,
    _tmp: tempfile::TempDir,
}

fn build(out: &Path) -> String {
    let output = run(Command::new(workspace().join("tools/image.sh"))
        .args(["--test-build", "--out"])
        .arg(out)
        .env("CARGO_TARGET_DIR", target_dir()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let line = stdout.lines().last().unwrap_or_default();
    line.strip_prefix("image: digest ").unwrap_or_else(|| panic!("no digest in {stdout}")).to_string()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn json_blob(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&fs::read(blob(layout, digest)).expect("blob")).expect("JSON blob")
}

/// Reads the layout's one image; every blob it names must match its digest.
fn read(out: PathBuf, layout: &Path, tmp: tempfile::TempDir) -> Image {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json")).unwrap();
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let digest = manifests[0]["digest"].as_str().expect("manifest digest").to_string();
    let manifest = json_blob(layout, &digest);
    let config = json_blob(layout, manifest["config"]["digest"].as_str().expect("config digest"));
    for d in [&manifests[0], &manifest["config"]].into_iter().chain(manifest["layers"].as_array().expect("layers")) {
        let bytes = fs::read(blob(layout, d["digest"].as_str().unwrap())).expect("blob");
        assert_eq!(Some(bytes.len() as u64), d["size"].as_u64(), "size of {d}");
        assert_eq!(format!("sha256:{:x}", Sha256::digest(&bytes)), d["digest"].as_str().unwrap(), "digest of {d}");
    }
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    // A container's root directory is 0755, whoever extracts it.
    run(Command::new("chmod").arg("0755").arg(&rootfs));
    let mut listing = BTreeMap::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let file = blob(layout, layer["digest"].as_str().unwrap());
        run(Command::new("tar").arg("--numeric-owner").arg("-xzf").arg(&file).arg("-C").arg(&rootfs));
        let out = run(Command::new("tar").args(["--numeric-owner", "-tvzf"]).arg(&file));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let path = f[5].trim_start_matches("./").trim_end_matches('/').to_string();
            let target = if f.len() > 7 && f[6] == "->" { f[7].to_string() } else { String::new() };
            if !path.is_empty() && path != "." {
                listing.insert(path, (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap(), target));
            }
        }
    }
    Image { out, digest, config, listing, rootfs, _tmp: tmp }
}

/// The image, built once for all tests here.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("image");
        let printed = build(&out);
        let image = read(out.clone(), &out.join("oci"), tmp);
        assert_eq!(printed, image.digest, "the printed digest is not the layout's");
        assert_eq!(fs::read_to_string(out.join("digest")).unwrap().trim(), image.digest);
        image
    })
}

#[test]
fn the_same_inputs_give_the_same_digest_and_archive() {
    let first = image();
    let tmp = tempfile::tempdir().unwrap();
    let second = tmp.path().join("again");
    let digest = build(&second);
    println!("digests: {} and {digest}", first.digest);
    for binary in [OPERATOR, CONNECTOR] {
        let path = |out: &Path| out.join("rootfs").join(binary.trim_start_matches('/'));
        assert!(
            fs::read(path(&first.out)).unwrap() == fs::read(path(&second)).unwrap(),
            "{binary} changed between the two builds: another build replaced the test build's binaries \
             meanwhile (a target directory shared by several checkouts?)"
        );
    }
    assert_eq!(digest, first.digest);
    let archive = |dir: &Path| fs::read(dir.join("crmessenger.oci.tar")).expect("oci archive");
    assert!(archive(&first.out) == archive(&second), "the two oci-archive tarballs differ");
}

#[test]
fn the_archive_holds_the_layout() {
    let image = image();
    let tmp = tempfile::tempdir().unwrap();
    run(Command::new("tar").arg("-xf").arg(image.out.join("crmessenger.oci.tar")).arg("-C").arg(tmp.path()));
    let index: Value = serde_json::from_slice(&fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], json!(image.digest));
    assert_eq!(fs::read_to_string(tmp.path().join("oci-layout")).unwrap(), r#"{"imageLayoutVersion":"1.0.0"}"#);
    let tag = format!("{}-whatsapp-web-dev", env!("CARGO_PKG_VERSION"));
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], json!(tag));
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        json!(format!("ghcr.io/crmessenger/crmessenger:{tag}"))
    );
    read(image.out.clone(), tmp.path(), tempfile::tempdir().unwrap());
}

#[test]
fn there_is_no_shell_and_nothing_but_the_binaries_and_what_they_load() {
    let image = image();
    let shells = ["sh", "bash", "dash", "ash", "zsh", "ksh", "busybox", "toybox", "apt", "apt-get", "dpkg", "apk"];
    for path in image.listing.keys() {
        let name = path.rsplit('/').next().unwrap();
        assert!(!shells.contains(&name), "{path} is in the image");
    }
    let files: BTreeSet<&str> =
        image.listing.iter().filter(|(_, (mode, ..))| !mode.starts_with('d')).map(|(p, _)| p.as_str()).collect();
    let (libraries, others): (BTreeSet<&str>, BTreeSet<&str>) =
        files.iter().partition(|p| p.starts_with("lib") || p.starts_with("usr/lib"));
    assert_eq!(
        others,
        BTreeSet::from([
            "etc/group",
            "etc/nsswitch.conf",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/crmessenger-connector",
            "usr/local/bin/crmessenger-operator",
        ])
    );
    for lib in &libraries {
        let name = lib.rsplit('/').next().unwrap();
        assert!(name.contains(".so"), "{lib} is not a shared library");
    }
    // The dynamic loader at the path the binaries name (x86-64 or arm64 glibc).
    assert!(
        libraries.iter().any(|l| l.starts_with("lib64/ld-linux") || l.starts_with("lib/ld-linux")),
        "{libraries:?}"
    );
    assert!(libraries.iter().any(|l| l.ends_with("/libc.so.6")), "{libraries:?}");
    let tmp: Vec<&String> = image.listing.keys().filter(|p| p.starts_with("tmp/")).collect();
    assert!(tmp.is_empty(), "/tmp is not empty: {tmp:?}");
}

#[test]
fn runs_as_nonroot_by_absolute_path_with_no_entrypoint() {
    let image = image();
    let config = &image.config["config"];
    assert_eq!(config["User"], json!("65532:65532"));
    assert!(config["Entrypoint"].is_null(), "{config}");
    assert_eq!(config["Cmd"], json!([OPERATOR, "run"]));
    assert_eq!(config["Env"], json!(["PATH=/usr/local/bin"]));
    let labels = &config["Labels"];
    assert_eq!(labels["io.crmessenger.variant"], json!("whatsapp-web"));
    assert_eq!(labels["io.crmessenger.profile"], json!("dev"));
    assert_eq!(labels["org.opencontainers.image.version"], json!(env!("CARGO_PKG_VERSION")));
    let passwd = fs::read_to_string(image.rootfs.join("etc/passwd")).unwrap();
    let group = fs::read_to_string(image.rootfs.join("etc/group")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
    assert_eq!(image.config["created"], json!("1970-01-01T00:00:00Z"));
}

#[test]
fn root_owns_everything_and_only_tmp_is_writable() {
    for (path, (mode, owner, ..)) in &image().listing {
        assert_eq!(owner, "0/0", "{path}");
        let writable = mode.as_bytes()[5] == b'w' || mode.as_bytes()[8] == b'w';
        if path == "tmp" {
            assert_eq!(mode, "drwxrwxrwt", "/tmp");
        } else {
            assert!(!writable || mode.starts_with('l'), "{path} is {mode}");
        }
    }
}

#[test]
fn the_binaries_run_on_the_libraries_in_the_image() {
    let Some(chroot_bin) = which("chroot").filter(|_| is_root()) else {
        println!("skipped: needs root and chroot");
        return;
    };
    let image = image();
    // Only the image's files are visible in the chroot, so this runs on its loader
    // and libraries; the environment is the image's, as a runtime would set it.
    let chroot = |args: &[&str]| {
        let mut cmd = Command::new(&chroot_bin);
        cmd.env_clear().env("PATH", "/usr/local/bin").arg("--userspec=65532:65532").arg(&image.rootfs).args(args);
        String::from_utf8_lossy(&run(&mut cmd).stdout).into_owned()
    };
    assert!(chroot(&[CONNECTOR, "--help"]).contains("Usage: crmessenger-connector"));
    assert!(chroot(&[OPERATOR, "--help"]).contains("Usage: crmessenger-operator"));
    // The chart's present `command: [crmessenger-operator]` resolves through the image's PATH.
    assert!(chroot(&["crmessenger-operator", "--version"]).starts_with("crmessenger-operator "));
    let mut shell = Command::new(&chroot_bin);
    shell.env_clear().arg(&image.rootfs).args(["/bin/sh", "-c", "true"]);
    assert!(!shell.output().unwrap().status.success(), "a shell ran in the image");
}

#[test]
fn the_binaries_run_under_runc_with_a_read_only_root_and_no_capabilities() {
    if !is_root() || which("runc").is_none() {
        println!("skipped: needs root and runc (Debian package runc)");
        return;
    }
    let image = image();
    let bundle = tempfile::tempdir().unwrap();
    let rootfs = bundle.path().join("rootfs");
    run(Command::new("cp").arg("-a").arg(&image.rootfs).arg(&rootfs));
    for (i, binary) in [CONNECTOR, OPERATOR].into_iter().enumerate() {
        // What the connector pod's restricted security context asks for.
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 65532, "gid": 65532 },
                "args": [binary, "--help"],
                "env": image.config["config"]["Env"],
                "cwd": "/",
                "capabilities": { "bounding": [], "effective": [], "permitted": [] },
                "noNewPrivileges": true,
            },
            "root": { "path": "rootfs", "readonly": true },
            "hostname": "image-test",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=64k"] },
                { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"] },
            ],
            "linux": {
                "namespaces": [{ "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" }, { "type": "network" }],
                "maskedPaths": ["/proc/kcore"],
            },
        });
        fs::write(bundle.path().join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let id = format!("crmessenger-image-test-{}-{i}", std::process::id());
        let out = run(Command::new("runc")
            .arg("--root")
            .arg(bundle.path().join("state"))
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&id));
        let name = binary.rsplit('/').next().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Usage: {name}")), "{out:?}");
    }
}

#[test]
fn the_containerfile_builds_the_same_image_with_buildah() {
    if !is_root() || which("buildah").is_none() {
        println!("skipped: needs root and buildah (Debian package buildah; tools/test.sh installs it)");
        return;
    }
    let ours = image();
    let tmp = tempfile::tempdir().unwrap();
    let storage = ["--storage-driver", "vfs"];
    let roots = |cmd: &mut Command| {
        cmd.args(storage).arg("--root").arg(tmp.path().join("root")).arg("--runroot").arg(tmp.path().join("runroot"));
    };
    let mut bud = Command::new("buildah");
    bud.arg("bud");
    roots(&mut bud);
    bud.args(["--isolation", "chroot", "--quiet", "-f"]).arg(workspace().join("Containerfile"));
    for arg in fs::read_to_string(ours.out.join("build-args")).unwrap().lines() {
        bud.args(["--build-arg", arg]);
    }
    bud.args(["-t", "crmessenger-image-test"]).arg(&ours.out);
    let started = std::time::Instant::now();
    run(&mut bud);
    let mut push = Command::new("buildah");
    push.arg("push");
    roots(&mut push);
    push.args(["--quiet", "crmessenger-image-test"]).arg(format!("oci:{}:test", tmp.path().join("oci").display()));
    run(&mut push);
    println!("buildah bud + push: {:.1}s", started.elapsed().as_secs_f64());
    let theirs = read(tmp.path().join("oci"), &tmp.path().join("oci"), tempfile::tempdir().unwrap());

    // The config a runtime uses; Buildah adds a label naming its own version.
    let mut config = theirs.config["config"].clone();
    config["Labels"].as_object_mut().unwrap().remove("io.buildah.version");
    for key in ["User", "Entrypoint", "Cmd", "Env", "WorkingDir", "Labels"] {
        let normal = |v: &Value| if v == &json!([]) || v == &json!("") { Value::Null } else { v.clone() };
        assert_eq!(normal(&config[key]), normal(&ours.config["config"][key]), "{key}");
    }
    // The files: same paths, types, modes, owners, sizes, link targets and bytes.
    // Layer digests differ: Buildah's tar has the files' real mtimes.
    assert_eq!(theirs.listing, ours.listing);
    for (path, (mode, ..)) in &ours.listing {
        if mode.starts_with('-') {
            let (a, b) = (fs::read(ours.rootfs.join(path)).unwrap(), fs::read(theirs.rootfs.join(path)).unwrap());
            assert!(a == b, "{path} differs");
        }
    }
}
