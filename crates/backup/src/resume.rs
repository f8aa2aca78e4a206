//! What lets an interrupted backup or restore continue where it stopped: an exclusive lock on
//! the directory being written, and an append-only journal of the files already finished.
//!
//! A journal line is written (and synced) only once its file is complete and synced, so after
//! a crash every journaled file is whole and every other file is redone. A torn last line (a
//! crash while writing it) is ignored: that file is redone too.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{io, BackupError, Result};

/// An exclusive lock on `path` (created if missing), held until dropped or the process dies.
/// `busy` is the error when another live process holds it.
pub(crate) fn lock_file(path: &Path, busy: impl FnOnce() -> BackupError) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io("cannot open", path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(busy()),
        Err(std::fs::TryLockError::Error(e)) => Err(BackupError::Io {
            what: "cannot lock",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Replaces the contents of an open (locked) file, synced.
pub(crate) fn rewrite(file: &mut File, path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Seek;
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|_| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(io("cannot write", path))
}

/// An append-only journal of finished files, keyed by `key(entry)`.
pub(crate) struct Journal<T> {
    path: PathBuf,
    file: File,
    done: HashMap<String, T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (or creates) the journal at `path` and reads the entries already in it.
    pub(crate) fn open(path: &Path, key: impl Fn(&T) -> String) -> Result<Self> {
        let mut done = HashMap::new();
        match File::open(path) {
            Ok(file) => {
                for line in std::io::BufReader::new(file).lines() {
                    let line = line.map_err(io("cannot read", path))?;
                    // Only the last line can be torn; it and anything unreadable is redone.
                    if let Ok(entry) = serde_json::from_str::<T>(&line) {
                        done.insert(key(&entry), entry);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot read", path)(e)),
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("cannot write", path))?;
        // A torn line from a crash: start the next entry on a line of its own.
        file.write_all(b"\n").map_err(io("cannot write", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// The entry journaled under `key`, if its file was finished.
    pub(crate) fn get(&self, key: &str) -> Option<&T> {
        self.done.get(key)
    }

    /// Records a finished file (synced before returning).
    pub(crate) fn record(&mut self, key: String, entry: T) -> Result<()> {
        let mut line = serde_json::to_vec(&entry).map_err(|e| BackupError::Store(e.to_string()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(io("cannot write", &self.path))?;
        self.done.insert(key, entry);
        Ok(())
    }
}

/// Removes a file if it is there.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", path)(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_keeps_whole_lines_and_drops_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        {
            let mut j = Journal::<String>::open(&path, Clone::clone).unwrap();
            j.record("a".into(), "a".into()).unwrap();
            j.record("b".into(), "b".into()).unwrap();
        }
        // A crash in the middle of the third line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"\"c").unwrap();
        let mut j = Journal::<String>::open(&path, Clone::clone).unwrap();
        assert!(j.get("a").is_some() && j.get("b").is_some() && j.get("c").is_none());
        j.record("d".into(), "d".into()).unwrap();
        let j = Journal::<String>::open(&path, Clone::clone).unwrap();
        assert!(
            j.get("d").is_some(),
            "an entry after a torn line is read back"
        );
    }

    #[test]
    fn a_locked_file_is_refused_to_a_second_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let busy = || BackupError::Store("busy".into());
        let held = lock_file(&path, busy).unwrap();
        assert!(lock_file(&path, busy).is_err());
        drop(held);
        lock_file(&path, busy).unwrap();
    }
}
