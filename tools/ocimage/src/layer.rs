//! A root filesystem directory as one reproducible layer tarball.
//!
//! The same tree gives the same bytes wherever and whenever it was copied: entries
//! in byte order of their paths (a directory before what it holds), every entry
//! owned by 0:0 with the one given mtime, modes fixed (directories 0755 — 1777 if
//! the sticky bit is set, as on `/tmp` —, files 0755 if their owner may execute
//! them, else 0644), no user or group names, no extended attributes. Only
//! directories, regular files and symbolic links are accepted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

/// Writes the tarball of everything under `root` (not `root` itself) to `out`.
pub fn write<W: Write>(root: &Path, mtime: u64, out: W) -> Result<W> {
    let mut builder = Builder::new(out);
    append_dir(&mut builder, root, "", mtime)?;
    Ok(builder.into_inner()?)
}

fn append_dir<W: Write>(builder: &mut Builder<W>, dir: &Path, prefix: &str, mtime: u64) -> Result<()> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.into_string().map_err(|n| anyhow::anyhow!("{n:?} in {} is not UTF-8", dir.display()))?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let inside = format!("{prefix}{name}");
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let kind = meta.file_type();
        let mut header = Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(0);
        if kind.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_mode(if meta.permissions().mode() & 0o1000 != 0 { 0o1777 } else { 0o755 });
            builder.append_data(&mut header, format!("{inside}/"), io::empty())?;
            append_dir(builder, &path, &format!("{inside}/"), mtime)?;
        } else if kind.is_file() {
            header.set_entry_type(EntryType::Regular);
            header.set_mode(if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            builder.append_data(&mut header, &inside, file).with_context(|| format!("adding {}", path.display()))?;
        } else if kind.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            builder.append_link(&mut header, &inside, fs::read_link(&path)?)?;
        } else {
            bail!("{} is neither a directory, a file nor a symbolic link", path.display());
        }
    }
    Ok(())
}

/// A writer that passes bytes on and hashes them with SHA-256 on the way.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    /// Hashes what goes to `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    /// The writer, the `sha256:` digest and the size of what went through.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex(&self.hasher.finalize())), self.size)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path, file_mode: u32) {
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"#!binary").unwrap();
        fs::write(root.join("etc"), b"x").unwrap();
        fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(file_mode)).unwrap();
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
    }

    fn entries(tarball: &[u8]) -> Vec<(String, u32, u64, u64)> {
        let mut archive = tar::Archive::new(tarball);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            out.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap() + h.gid().unwrap(),
                h.mtime().unwrap(),
            ));
        }
        out
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_modes_times_and_order_on_disk() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path(), 0o700);
        tree(b.path(), 0o775);
        let a = write(a.path(), 7, Vec::new()).unwrap();
        let b = write(b.path(), 7, Vec::new()).unwrap();
        assert!(a == b, "the two tarballs differ");
        assert_eq!(
            entries(&a),
            [
                ("bin".to_string(), 0o777, 0, 7),
                ("etc".to_string(), 0o644, 0, 7),
                ("tmp/".to_string(), 0o1777, 0, 7),
                ("usr/".to_string(), 0o755, 0, 7),
                ("usr/bin/".to_string(), 0o755, 0, 7),
                ("usr/bin/tool".to_string(), 0o755, 0, 7),
            ]
        );
    }

    #[test]
    fn refuses_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        assert!(write(dir.path(), 0, Vec::new()).is_err());
    }
}
