//! Encryption of a backup's stored files with XChaCha20-Poly1305, in 64 KiB chunks so memory
//! stays flat whatever the file size.
//!
//! A file is `ORTLENC1`, a random 16-byte nonce prefix, then one sealed chunk per 64 KiB of
//! plaintext (the last one possibly shorter, at least one chunk even for an empty file). Chunk
//! `i` is sealed with the nonce `prefix ‖ i` (big-endian u64) and, as associated data, a byte
//! saying whether it is the last: reordering, dropping, appending or truncating chunks fails
//! authentication, as does any flipped bit. The key never leaves the key file; manifests
//! record only its fingerprint.

use std::io::{Read, Write};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::error::{io, BackupError, Result};
use crate::files::HashingWriter;

/// The algorithm name recorded in manifests.
pub const ALGORITHM: &str = "xchacha20poly1305-chunked-64k";
const MAGIC: &[u8; 8] = b"ORTLENC1";
const PREFIX: usize = 16;
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

/// A backup encryption key (32 bytes), read from a key file.
#[derive(Clone)]
pub struct BackupKey {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({})", self.fingerprint)
    }
}

impl PartialEq for BackupKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for BackupKey {}

impl BackupKey {
    /// Reads a key file: 32 raw bytes, or 64 hexadecimal digits (surrounding whitespace
    /// ignored). `openssl rand -hex 32 > key` makes one.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io("cannot read the key file", path))?;
        let text = String::from_utf8_lossy(&bytes);
        let hex = text.trim();
        let key: Vec<u8> = if bytes.len() == 32 {
            bytes
        } else if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        } else {
            return Err(BackupError::Store(format!(
                "the key file {} holds neither 32 bytes nor 64 hex digits; make one with `openssl rand -hex 32 > {}`",
                path.display(),
                path.display()
            )));
        };
        Ok(Self::from_bytes(&key))
    }

    fn from_bytes(key: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"ortelius backup key fingerprint\0");
        hasher.update(key);
        let digest = hasher.finalize();
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key)),
            fingerprint,
        }
    }

    /// A short public fingerprint (not the key, nor enough to find it).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn nonce(prefix: &[u8; PREFIX], chunk: u64) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..PREFIX].copy_from_slice(prefix);
        nonce[PREFIX..].copy_from_slice(&chunk.to_be_bytes());
        XNonce::from(nonce)
    }
}

/// Fills `buf` from `reader` as far as it goes; returns how much was read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Sealed chunks in flight between the sealing and the writing thread.
const IN_FLIGHT: usize = 8;

/// Encrypts `plain` into `sealed` (synced); the source is kept. Returns the size and SHA-256
/// of the sealed file, hashed as it is written. Sealing runs on this thread and writing (with
/// hashing) on another, at most [`IN_FLIGHT`] chunks behind, so both cores work and memory
/// stays flat. `on_bytes` hears of every chunk read.
pub(crate) fn encrypt_file(
    plain: &Path,
    sealed: &Path,
    key: &BackupKey,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(u64, String)> {
    let size = std::fs::metadata(plain)
        .map_err(io("cannot read", plain))?
        .len();
    let chunks = size.div_ceil(CHUNK as u64).max(1);
    let mut reader = std::fs::File::open(plain).map_err(io("cannot read", plain))?;
    let file = std::fs::File::create(sealed).map_err(io("cannot write", sealed))?;
    let mut prefix = [0u8; PREFIX];
    getrandom(&mut prefix)?;
    let (send, receive) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(u64, String)> {
            let mut out = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
            out.write_all(MAGIC)
                .and_then(|()| out.write_all(&prefix))
                .map_err(io("cannot write", sealed))?;
            for chunk in receive {
                out.write_all(&chunk).map_err(io("cannot write", sealed))?;
            }
            let (buffered, size, sha256) = out.finish();
            buffered
                .into_inner()
                .map_err(|e| BackupError::Store(format!("cannot write {}: {e}", sealed.display())))?
                .sync_all()
                .map_err(io("cannot sync", sealed))?;
            Ok((size, sha256))
        });
        let sealing = (|| -> Result<()> {
            let mut buf = vec![0u8; CHUNK];
            for chunk in 0..chunks {
                let n = fill(&mut reader, &mut buf).map_err(io("cannot read", plain))?;
                on_bytes(n as u64);
                let last = chunk + 1 == chunks;
                let sealed_chunk = key
                    .cipher
                    .encrypt(
                        &BackupKey::nonce(&prefix, chunk),
                        Payload {
                            msg: &buf[..n],
                            aad: &[u8::from(last)],
                        },
                    )
                    .map_err(|_| {
                        BackupError::Store(format!("cannot encrypt {}", plain.display()))
                    })?;
                if send.send(sealed_chunk).is_err() {
                    break; // the writer stopped; its error is the one to report
                }
            }
            Ok(())
        })();
        drop(send);
        let written = writer
            .join()
            .map_err(|_| BackupError::Store(format!("writing {} failed", sealed.display())))?;
        sealing.and(written)
    })
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use chacha20poly1305::aead::rand_core::RngCore;
    chacha20poly1305::aead::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| BackupError::Store(format!("no randomness for a nonce: {e}")))
}

/// Decrypts `from` into `writer` (`None`: only authenticate); returns the plaintext bytes.
/// Fails with a message on a wrong key, a flipped bit or a truncated file.
pub(crate) fn decrypt(
    from: &Path,
    key: &BackupKey,
    mut writer: Option<&mut dyn Write>,
) -> std::result::Result<u64, String> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(from).map_err(|e| e.to_string())?);
    let size = std::fs::metadata(from).map_err(|e| e.to_string())?.len();
    let mut header = [0u8; MAGIC.len() + PREFIX];
    if fill(&mut reader, &mut header).map_err(|e| e.to_string())? < header.len()
        || &header[..MAGIC.len()] != MAGIC
    {
        return Err("not an encrypted backup file (bad header)".to_owned());
    }
    let mut prefix = [0u8; PREFIX];
    prefix.copy_from_slice(&header[MAGIC.len()..]);
    let body = size.saturating_sub(header.len() as u64);
    let chunks = body.div_ceil((CHUNK + TAG) as u64).max(1);
    let mut buf = vec![0u8; CHUNK + TAG];
    let mut total = 0u64;
    for chunk in 0..chunks {
        let n = fill(&mut reader, &mut buf).map_err(|e| e.to_string())?;
        let last = chunk + 1 == chunks;
        let plain = key
            .cipher
            .decrypt(
                &BackupKey::nonce(&prefix, chunk),
                Payload {
                    msg: &buf[..n],
                    aad: &[u8::from(last)],
                },
            )
            .map_err(|_| {
                format!("chunk {chunk} fails authentication: the file was changed or truncated, or the key is wrong")
            })?;
        if let Some(w) = writer.as_mut() {
            w.write_all(&plain).map_err(|e| e.to_string())?;
        }
        total += plain.len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_round_trip_and_any_change_fails_authentication() {
        let dir = tempfile::tempdir().unwrap();
        let key = BackupKey::from_bytes(&[7u8; 32]);
        for size in [0usize, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.path().join("f"), &data).unwrap();
            let sealed = dir.path().join("f.enc");
            let (size_sealed, sha) =
                encrypt_file(&dir.path().join("f"), &sealed, &key, &mut |_| {}).unwrap();
            assert_eq!(
                (size_sealed, sha),
                crate::files::sha256_file(&sealed, &mut |_| {}).unwrap(),
                "the checksum is of the file as written"
            );
            let mut out = Vec::new();
            assert_eq!(decrypt(&sealed, &key, Some(&mut out)).unwrap(), size as u64);
            assert_eq!(out, data);
            let wrong = BackupKey::from_bytes(&[8u8; 32]);
            assert!(decrypt(&sealed, &wrong, None).is_err());
            let bytes = std::fs::read(&sealed).unwrap();
            let mut flipped = bytes.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            std::fs::write(&sealed, &flipped).unwrap();
            assert!(
                decrypt(&sealed, &key, None).is_err(),
                "flipped, size {size}"
            );
            if size > CHUNK {
                // Cut at a chunk boundary: the new last chunk was not sealed as last.
                std::fs::write(&sealed, &bytes[..MAGIC.len() + PREFIX + CHUNK + TAG]).unwrap();
                assert!(
                    decrypt(&sealed, &key, None).is_err(),
                    "truncated, size {size}"
                );
            }
            std::fs::remove_file(&sealed).unwrap();
        }
    }

    /// The process's peak resident memory (VmHWM), in KiB.
    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Memory stays flat: encrypting and decrypting a large file (256 MiB here; set
    /// ORTELIUS_CRYPT_MIB=1024 for a gigabyte) raises the peak by far less than the file.
    #[test]
    fn encrypting_a_large_file_keeps_memory_flat() {
        let mib: u64 = std::env::var("ORTELIUS_CRYPT_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(dir.path().join("big")).unwrap());
            let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
            for _ in 0..mib {
                f.write_all(&block).unwrap();
            }
        }
        let key = BackupKey::from_bytes(&[3u8; 32]);
        let before = peak_rss_kib();
        let (big, sealed) = (dir.path().join("big"), dir.path().join("big.enc"));
        encrypt_file(&big, &sealed, &key, &mut |_| {}).unwrap();
        std::fs::remove_file(&big).unwrap();
        let plain = decrypt(&sealed, &key, Some(&mut std::io::sink())).unwrap();
        let grown = peak_rss_kib().saturating_sub(before);
        assert_eq!(plain, mib << 20);
        eprintln!("{mib} MiB encrypted and decrypted; peak memory grew by {grown} KiB");
        assert!(grown < 16 * 1024, "peak memory grew by {grown} KiB");
    }

    #[test]
    fn key_files_take_raw_or_hex_keys_and_refuse_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "01".repeat(32))).unwrap();
        assert_eq!(
            BackupKey::from_file(&raw).unwrap().fingerprint(),
            BackupKey::from_file(&hex).unwrap().fingerprint()
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let err = BackupKey::from_file(&short).unwrap_err().to_string();
        assert!(err.contains("openssl rand -hex 32"), "{err}");
    }
}
