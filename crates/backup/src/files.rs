//! Files of a backup: listing, checksums, synced writes, zstd compression.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io, BackupError, Result};

/// Size and SHA-256 (hex) of a file; `on_bytes` hears of every chunk read.
pub(crate) fn sha256_file(path: &Path, on_bytes: &mut dyn FnMut(u64)) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(io("cannot read", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_bytes(n as u64);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes (SHA-256) and counts what passes through it, so a file's checksum is
/// known once it is written, without reading it back.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The writer, and the size and SHA-256 (hex) of everything written.
    pub(crate) fn finish(self) -> (W, u64, String) {
        (self.inner, self.written, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Every file under `root`, as sorted paths relative to it.
pub(crate) fn list_files(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))? {
            let entry = entry.map_err(io("cannot list", dir))?;
            let path = entry.path();
            if entry
                .file_type()
                .map_err(io("cannot inspect", &path))?
                .is_dir()
            {
                walk(root, &path, out)?;
            } else {
                out.push(
                    path.strip_prefix(root)
                        .map(Path::to_path_buf)
                        .unwrap_or(path),
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

pub(crate) fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::Io {
            what: "cannot inspect",
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// Writes a file atomically (temporary file, fsync, rename).
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("cannot write", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot write", path))
}

/// A reader that reports every chunk it reads.
struct ProgressReader<'a, R> {
    inner: R,
    on_bytes: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}

/// Compresses `from` into `to` (synced when `sync`); the source is kept; `on_bytes` hears of
/// every chunk read. Returns the size and SHA-256 of what it wrote.
pub(crate) fn compress_file(
    from: &Path,
    to: &Path,
    sync: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(u64, String)> {
    let reader = ProgressReader {
        inner: std::fs::File::open(from).map_err(io("cannot read", from))?,
        on_bytes,
    };
    let file = std::fs::File::create(to).map_err(io("cannot write", to))?;
    let mut writer = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
    zstd::stream::copy_encode(reader, &mut writer, 3).map_err(io("cannot compress", from))?;
    let (buffered, size, sha256) = writer.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| BackupError::Store(format!("cannot write {}: {e}", to.display())))?;
    if sync {
        file.sync_all().map_err(io("cannot sync", to))?;
    }
    Ok((size, sha256))
}

/// Decompresses `from` (a `.zst` file) into `to`; returns the bytes written.
pub(crate) fn decompress(from: &Path, to: &Path) -> std::io::Result<u64> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let reader = std::fs::File::open(from)?;
    let mut writer = std::fs::File::create(to)?;
    zstd::stream::copy_decode(reader, &mut writer)?;
    writer.sync_all()?;
    writer.metadata().map(|m| m.len())
}

/// Puts `from` at `to` (creating its directory): a hard link where the filesystem allows, else
/// a copy. Backup files are never modified in place, so sharing them is safe.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .and_then(|_| std::fs::File::open(to)?.sync_all())
            .map_err(io("cannot copy", from))?;
    }
    Ok(())
}
