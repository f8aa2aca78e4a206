//! Space: every write and delete (sweep's too) leaves history in etcd until it is compacted,
//! and compacted space returns to the filesystem only after a defragmentation. `maintain`
//! compacts history older than a retention and defragments the members one at a time (a
//! member is briefly unavailable while it defragments) once their files have grown well past
//! what they use, then disarms a "database space exceeded" alarm. Configure it (`maintenance` in
//! the config) to run in the background, or use etcd's own `--auto-compaction-*` flags and
//! defragment from the operator's tooling. A store with maintenance configured also runs a pass
//! as soon as one of its writes finds the cluster over quota, and retries that write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, ConnectOptions,
};
use ortelius_kvs::KvsResult;

use crate::{classify, EtcdKvs};

/// What one maintenance pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// The revision history was compacted up to (0: nothing compacted).
    pub compacted_to: i64,
    /// Members defragmented.
    pub defragmented: usize,
    /// Largest member database file before and after, bytes.
    pub largest_before: i64,
    pub largest_after: i64,
    /// "Database space exceeded" alarms disarmed after the pass made room.
    pub alarms_disarmed: usize,
}

impl EtcdKvs {
    /// Compacts revisions older than `keep_revisions` behind the current one, then
    /// defragments each member whose database file exceeds `defragment_above` bytes.
    pub fn maintain(
        &self,
        keep_revisions: i64,
        defragment_above: i64,
    ) -> KvsResult<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let (_, _, revision) =
            self.range(self.prefix.clone(), self.prefix.clone(), 1, true, None)?;
        let target = revision - keep_revisions;
        if target > 0 {
            let mut client = self.client();
            match self
                .block_on(client.compact(target, Some(CompactionOptions::new().with_physical())))
            {
                Ok(_) => report.compacted_to = target,
                // Already compacted that far (another process did it): fine.
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => return Err(classify(&self.describe, "compact", true, &e)),
            }
        }
        for endpoint in &self.config.endpoints {
            let options = ConnectOptions::new()
                .with_connect_timeout(self.config.connect_timeout)
                .with_timeout(Duration::from_secs(60));
            let mut member = self
                .block_on(Client::connect([endpoint.as_str()], Some(options)))
                .map_err(|e| classify(&self.describe, "reach a member", false, &e))?;
            let status = self
                .block_on(member.status())
                .map_err(|e| classify(&self.describe, "read a member's status", false, &e))?;
            let before = status.db_size();
            report.largest_before = report.largest_before.max(before);
            let mut after = before;
            if before > defragment_above {
                self.block_on(member.defragment())
                    .map_err(|e| classify(&self.describe, "defragment a member", true, &e))?;
                report.defragmented += 1;
                after = self
                    .block_on(member.status())
                    .map(|s| s.db_size())
                    .unwrap_or(before);
            }
            report.largest_after = report.largest_after.max(after);
        }
        // A member that reached its quota raised a NOSPACE alarm, which keeps the whole
        // cluster read-only until someone disarms it; now that compaction and defragmentation
        // made room, do what an operator would (`etcdctl alarm disarm`). If there is still no
        // room, the member raises it again at its next write.
        let mut client = self.client();
        let alarms = self
            .block_on(client.alarm(AlarmAction::Get, AlarmType::None, None))
            .map_err(|e| classify(&self.describe, "list alarms", false, &e))?;
        for alarm in alarms
            .alarms()
            .iter()
            .filter(|a| a.alarm() == AlarmType::Nospace)
        {
            let mut options = AlarmOptions::new();
            options.with_member(alarm.member_id());
            self.block_on(client.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options)))
                .map_err(|e| classify(&self.describe, "disarm an alarm", true, &e))?;
            report.alarms_disarmed += 1;
        }
        Ok(report)
    }
}

/// Runs [`EtcdKvs::maintain`] every `interval` until dropped; the last report is kept.
pub struct Maintenance {
    stop: Arc<AtomicBool>,
    /// Set by a write that found the cluster over quota: run a pass now.
    wanted: Arc<AtomicBool>,
    /// Write attempts that found the cluster over quota (each asked for a pass).
    over_quota: AtomicU64,
    last: Arc<Mutex<Option<Result<MaintenanceReport, String>>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Maintenance {
    pub fn spawn(
        kvs: Arc<EtcdKvs>,
        interval: Duration,
        keep_revisions: i64,
        defragment_above: i64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let wanted = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(None));
        let (flag, asked, out) = (stop.clone(), wanted.clone(), last.clone());
        let handle = std::thread::Builder::new()
            .name("ortelius-etcd-maintenance".to_owned())
            .spawn(move || {
                let mut next = Instant::now() + interval;
                while !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if !asked.swap(false, Ordering::SeqCst) && Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + interval;
                    let report = kvs
                        .maintain(keep_revisions, defragment_above)
                        .map_err(|e| e.to_string());
                    if let Ok(mut l) = out.lock() {
                        *l = Some(report);
                    }
                }
            })
            .ok();
        Self {
            stop,
            wanted,
            over_quota: AtomicU64::new(0),
            last,
            handle,
        }
    }

    /// Asks for a pass now (a write found the cluster over its quota).
    pub(crate) fn make_room(&self) {
        self.over_quota.fetch_add(1, Ordering::Relaxed);
        self.wanted.store(true, Ordering::SeqCst);
    }

    /// How many write attempts found the cluster over its quota and asked for a pass (the
    /// write was then retried until the request timeout).
    pub fn over_quota_writes(&self) -> u64 {
        self.over_quota.load(Ordering::Relaxed)
    }

    /// The last pass's report, if one ran.
    pub fn last(&self) -> Option<Result<MaintenanceReport, String>> {
        self.last.lock().ok()?.clone()
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
