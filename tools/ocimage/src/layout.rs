//! An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) and the same
//! layout as one reproducible tarball (an `oci-archive`).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

use crate::layer::hex;

/// A blob's descriptor fields.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// A layout being written: the blobs so far, in the order they were added.
pub struct Layout {
    dir: PathBuf,
    blobs: Vec<Blob>,
}

impl Layout {
    /// Starts a layout in `dir`, which must not exist yet or be empty.
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256")).with_context(|| format!("creating {}", dir.display()))?;
        if fs::read_dir(dir)?.count() != 1 || fs::read_dir(dir.join("blobs/sha256"))?.count() != 0 {
            anyhow::bail!("{} is not empty", dir.display());
        }
        Ok(Self { dir: dir.to_path_buf(), blobs: Vec::new() })
    }

    /// A temporary file in the layout for a blob written by streaming; see [`Layout::add_file`].
    pub fn temp_file(&self) -> Result<(PathBuf, BufWriter<File>)> {
        let path = self.dir.join("blobs/sha256/.incoming");
        Ok((path.clone(), BufWriter::new(File::create(&path)?)))
    }

    /// Moves a streamed blob to its name.
    pub fn add_file(&mut self, temp: &Path, blob: Blob) -> Result<Blob> {
        fs::rename(temp, self.blob_path(&blob.digest))?;
        self.blobs.push(blob.clone());
        Ok(blob)
    }

    /// Adds a blob held in memory.
    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<Blob> {
        let blob = Blob { digest: format!("sha256:{}", hex(&Sha256::digest(bytes))), size: bytes.len() as u64 };
        fs::write(self.blob_path(&blob.digest), bytes)?;
        self.blobs.push(blob.clone());
        Ok(blob)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    /// Writes `oci-layout` and `index.json`, then the whole layout as a tarball to `archive`.
    pub fn finish(self, index: &[u8], archive: &Path, mtime: u64) -> Result<()> {
        let layout_file = br#"{"imageLayoutVersion":"1.0.0"}"#;
        fs::write(self.dir.join("oci-layout"), layout_file)?;
        fs::write(self.dir.join("index.json"), index)?;

        let mut names: Vec<String> = self.blobs.iter().map(|b| b.digest.trim_start_matches("sha256:").into()).collect();
        names.sort();
        names.dedup();
        let out = BufWriter::new(File::create(archive).with_context(|| format!("creating {}", archive.display()))?);
        let mut tar = Builder::new(out);
        let header = |kind: EntryType, mode: u32, size: u64| {
            let mut h = Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            h
        };
        for dir in ["blobs/", "blobs/sha256/"] {
            tar.append_data(&mut header(EntryType::Directory, 0o755, 0), dir, io::empty())?;
        }
        for name in names {
            let path = self.dir.join("blobs/sha256").join(&name);
            let size = fs::metadata(&path)?.len();
            tar.append_data(
                &mut header(EntryType::Regular, 0o644, size),
                format!("blobs/sha256/{name}"),
                File::open(&path)?,
            )?;
        }
        tar.append_data(&mut header(EntryType::Regular, 0o644, index.len() as u64), "index.json", index)?;
        tar.append_data(
            &mut header(EntryType::Regular, 0o644, layout_file.len() as u64),
            "oci-layout",
            &layout_file[..],
        )?;
        tar.into_inner()?.flush()?;
        Ok(())
    }
}
