//! The single server's durable state: one small file (`timelock.state`) holding the cluster
//! id, the epoch of the last start, the high-water mark and the immutable-timestamp floor,
//! rewritten atomically (temporary file, fsync, rename, directory fsync) before a timestamp
//! above the old mark is handed out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::authority::Durable;

const FILE: &str = "timelock.state";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub cluster: String,
    pub epoch: u64,
    pub hwm: i64,
    pub floor: i64,
}

impl State {
    fn encode(&self) -> String {
        format!(
            "ortelius-timelock 1\ncluster {}\nepoch {}\nhwm {}\nfloor {}\n",
            self.cluster, self.epoch, self.hwm, self.floor
        )
    }

    fn decode(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some("ortelius-timelock 1") {
            return Err("unknown format".to_owned());
        }
        let mut field = |name: &str| -> Result<String, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| format!("missing {name}"))
        };
        let cluster = field("cluster")?;
        let epoch = field("epoch")?
            .parse()
            .map_err(|_| "bad epoch".to_owned())?;
        let hwm = field("hwm")?.parse().map_err(|_| "bad hwm".to_owned())?;
        let floor = field("floor")?
            .parse()
            .map_err(|_| "bad floor".to_owned())?;
        Ok(Self {
            cluster,
            epoch,
            hwm,
            floor,
        })
    }
}

/// The state file of one server.
pub struct FileStore {
    dir: PathBuf,
    state: Mutex<State>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl FileStore {
    /// Opens (or creates) the state in `dir` and starts a new epoch.
    pub fn open(dir: &Path, new_cluster: impl FnOnce() -> String) -> Result<(Self, State), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
        let path = dir.join(FILE);
        let mut state = match std::fs::read_to_string(&path) {
            Ok(text) => State::decode(&text).map_err(|e| {
                format!(
                    "{} is damaged ({e}); restore it or start a new cluster in an empty directory",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                cluster: new_cluster(),
                epoch: 0,
                hwm: 0,
                floor: 0,
            },
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        state.epoch += 1;
        let store = Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(state.clone()),
        };
        store.write(&state)?;
        Ok((store, state))
    }

    fn write(&self, state: &State) -> Result<(), String> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let path = self.dir.join(FILE);
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(state.encode().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        })();
        result.map_err(|e| {
            format!(
                "cannot persist the timestamp bound in {}: {e}",
                path.display()
            )
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), String> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| "timelock state file lock poisoned".to_owned())?;
        let mut next = state.clone();
        f(&mut next);
        if next != *state {
            self.write(&next)?;
            *state = next;
        }
        Ok(())
    }
}

impl Durable for FileStore {
    fn raise(&self, hwm: i64) -> Result<(), String> {
        self.update(|s| s.hwm = s.hwm.max(hwm))
    }

    fn record_floor(&self, floor: i64) -> Result<(), String> {
        self.update(|s| s.floor = s.floor.max(floor))
    }
}
