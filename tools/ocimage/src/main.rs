//! `ocimage`: writes the CRMessenger image as an OCI image layout and an
//! `oci-archive` tarball, without a container daemon, and prints the manifest digest.
//!
//! It does what the `Containerfile` says — copies the context's root filesystem
//! directory to `/` as the one layer and takes the config (user, environment,
//! entrypoint, command, labels) from the same file — so an image built with
//! Docker, Buildah or Podman from that file has the same files and config. Unlike
//! theirs, its bytes depend on nothing but the inputs: the same tree, Containerfile,
//! build arguments, name and tag, and `SOURCE_DATE_EPOCH` (default 0, used for every
//! mtime and the `created` fields) give the same digest. `tools/image.sh` lays out
//! the tree and runs this.
//!
//! ```text
//! ocimage --context DIR --containerfile FILE --layout DIR --archive FILE
//!         --name REPOSITORY --tag TAG [--build-arg NAME=VALUE]... [--level 0-9]
//! ```

mod containerfile;
mod layer;
mod layout;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};

use layer::Hashing;
use layout::{Blob, Layout};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Default)]
struct Args {
    context: Option<PathBuf>,
    containerfile: Option<PathBuf>,
    layout: Option<PathBuf>,
    archive: Option<PathBuf>,
    name: Option<String>,
    tag: Option<String>,
    build_args: BTreeMap<String, String>,
    level: u32,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { level: 6, ..Args::default() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--context" => args.context = Some(value()?.into()),
            "--containerfile" => args.containerfile = Some(value()?.into()),
            "--layout" => args.layout = Some(value()?.into()),
            "--archive" => args.archive = Some(value()?.into()),
            "--name" => args.name = Some(value()?),
            "--tag" => args.tag = Some(value()?),
            "--level" => args.level = value()?.parse().context("--level takes 0-9")?,
            "--build-arg" => {
                let pair = value()?;
                let (k, v) = pair.split_once('=').context("--build-arg takes NAME=VALUE")?;
                args.build_args.insert(k.into(), v.into());
            }
            other => bail!("unknown argument {other} (see the doc comment of tools/ocimage/src/main.rs)"),
        }
    }
    if args.level > 9 {
        bail!("--level takes 0-9");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let need = |v: Option<PathBuf>, name: &str| v.with_context(|| format!("{name} is required"));
    let context = need(args.context, "--context")?;
    let containerfile_path = need(args.containerfile, "--containerfile")?;
    let layout_dir = need(args.layout, "--layout")?;
    let archive = need(args.archive, "--archive")?;
    let name = args.name.context("--name is required")?;
    let tag = args.tag.context("--tag is required")?;
    let mtime: u64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.parse().context("SOURCE_DATE_EPOCH is not a number of seconds")?,
        Err(_) => 0,
    };

    let text = std::fs::read_to_string(&containerfile_path)
        .with_context(|| format!("reading {}", containerfile_path.display()))?;
    let file = containerfile::parse(&text, &args.build_args)?;
    let rootfs = context.join(&file.copy_from);
    if !rootfs.is_dir() {
        bail!("{} (the Containerfile's COPY source) is not a directory", rootfs.display());
    }

    let mut layout = Layout::create(&layout_dir)?;
    let (temp, out) = layout.temp_file()?;
    let gzip = GzBuilder::new().mtime(0).write(Hashing::new(out), Compression::new(args.level));
    let (gzip, diff_id, _) = layer::write(&rootfs, mtime, Hashing::new(gzip))?.finish();
    let (mut out, digest, size) = gzip.finish()?.finish();
    out.flush()?;
    let layer = layout.add_file(&temp, Blob { digest, size })?;

    let created = rfc3339(mtime);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut config = serde_json::Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            config.insert(key.into(), value);
        }
    };
    set("Cmd", file.cmd.map(|v| json!(v)));
    set("Entrypoint", file.entrypoint.map(|v| json!(v)));
    set("Env", (!file.env.is_empty()).then(|| json!(file.env)));
    set("Labels", (!file.labels.is_empty()).then(|| json!(file.labels)));
    set("User", file.user.map(|v| json!(v)));
    set("WorkingDir", file.working_dir.map(|v| json!(v)));
    // Keys in sorted order, so the bytes do not depend on serde_json's map type.
    let config = json!({
        "architecture": arch,
        "config": config,
        "created": created,
        "history": [{ "created": created, "created_by": format!("COPY {}/ /", file.copy_from) }],
        "os": "linux",
        "rootfs": { "diff_ids": [diff_id], "type": "layers" },
    });
    let config = layout.add_bytes(&serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "config": { "digest": config.digest, "mediaType": "application/vnd.oci.image.config.v1+json", "size": config.size },
        "layers": [{ "digest": layer.digest, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": layer.size }],
        "mediaType": MANIFEST,
        "schemaVersion": 2,
    });
    let manifest = layout.add_bytes(&serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "manifests": [{
            "annotations": {
                // containerd (`ctr images import`) names the image after this one.
                "io.containerd.image.name": format!("{name}:{tag}"),
                "org.opencontainers.image.ref.name": tag,
            },
            "digest": manifest.digest,
            "mediaType": MANIFEST,
            "platform": { "architecture": arch, "os": "linux" },
            "size": manifest.size,
        }],
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "schemaVersion": 2,
    });
    layout.finish(&serde_json::to_vec(&index)?, &archive, mtime)?;
    println!("{}", manifest.digest);
    Ok(())
}

/// `seconds` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date after
/// Howard Hinnant's `civil_from_days`).
fn rfc3339(seconds: u64) -> String {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times_as_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(super::rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
