//! The audit log's writer. An append numbers the record at once (under one lock, so the chain's
//! order is the order of the appends) and queues it; one writer task chains what is queued (each
//! record's hash over the one before it, in number order: outside the lock the appends take) and
//! commits it in batches, one transaction each (group commit: while one batch commits, the next
//! gathers). Whoever must not acknowledge an action before its record is durable waits for that
//! record's number to be committed ([`AuditLog::durable`]). When the daemon keeps signed
//! checkpoints ([`AuditLog::checkpoint_to`], checkpoint.rs), the writer signs the committed head
//! after a commit once the interval has passed, and at close; the file write and its sync run on
//! the writer's task, once per interval.
//!
//! The queue is bounded. When the database is unavailable (a PostgreSQL restart), records wait
//! in it and the writer retries; when it is full, new actions are refused ([`AuditLog::ready`],
//! [`AuditLog::append`]: fail closed), while what the host must record anyway (a violation, a
//! plugin exiting) still queues up to twice the bound. Past that a record is counted as lost,
//! logged at once, and the count itself is recorded as soon as there is room: never dropped
//! silently.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use std::collections::BTreeMap;

use tokio::sync::{oneshot, Notify};

use crate::chain::{Entry, Record};
use crate::{StateError, Storage};

/// Records committed in one transaction at most.
const MAX_BATCH: usize = 4096;
/// The longest wait between two attempts to commit while the database fails.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

pub struct AuditLog {
    shared: Arc<Shared>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    chain: String,
    capacity: usize,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Signed checkpoints of the committed head, when the daemon keeps them (checkpoint.rs).
    checkpoints: Mutex<Option<Checkpoints>>,
}

struct Checkpoints {
    writer: crate::checkpoint::Writer,
    every: Duration,
    last: Option<(std::time::Instant, i64)>,
}

struct Queue {
    /// The number the next record gets.
    next_seq: i64,
    /// Numbered records, chained by the writer (in their order) when it takes them.
    pending: VecDeque<(i64, Record)>,
    /// Records taken by the writer and not committed yet.
    in_flight: usize,
    /// Records that found no room, not yet recorded as lost.
    lost: u64,
    /// Why commits fail, while they do.
    failing: Option<String>,
    /// Set when the chain cannot be written again (another writer took it): permanent.
    fatal: Option<String>,
    closing: bool,
    /// The last record committed.
    committed: i64,
    /// Who waits for which record: each woken once, when its record is committed (or dropped,
    /// when the log stops).
    waiters: BTreeMap<i64, Vec<oneshot::Sender<()>>>,
}

impl Queue {
    fn queued(&self) -> usize {
        self.pending.len() + self.in_flight
    }

    fn push(&mut self, record: Record) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, record));
        seq
    }

    /// Records the count of lost records first, when there are any.
    fn push_lost(&mut self) {
        if self.lost > 0 {
            let detail = serde_json::json!({
                "lost": self.lost,
                "why": "the audit queue was full (the database was unavailable or too slow)",
            });
            self.lost = 0;
            self.push(Record::new("audit", None, &detail));
        }
    }
}

/// A queued record's number: wait for it with [`AuditLog::durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(pub i64);

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log is full: {queued} records wait for the database ({why})")]
    Full { queued: usize, why: String },
    #[error("the audit log cannot be written: {0}")]
    Stopped(String),
    #[error("the audit record is not committed after {} s: {why}", within.as_secs())]
    Late { within: Duration, why: String },
}

impl AuditError {
    pub fn hint(&self) -> &'static str {
        match self {
            AuditError::Full { .. } | AuditError::Late { .. } => {
                "the daemon acts only when it can record what it does: bring the database back \
                 (or free its disk); queued records are committed then"
            }
            AuditError::Stopped(_) => {
                "restart the daemon; each daemon of a fleet needs a host id of its own"
            }
        }
    }
}

/// What the log has done, for status and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub chain: String,
    pub location: String,
    pub committed: i64,
    pub queued: usize,
    pub capacity: usize,
    pub failing: Option<String>,
    pub stopped: Option<String>,
}

impl AuditLog {
    /// Opens `chain` in `storage` (created at its genesis when new) and starts its writer; the
    /// queue holds `capacity` records for new actions.
    pub async fn open(
        storage: Arc<dyn Storage>,
        chain: &str,
        capacity: usize,
    ) -> Result<AuditLog, StateError> {
        let head = storage.open_chain(chain).await?;
        let shared = Arc::new(Shared {
            storage,
            chain: chain.to_string(),
            capacity: capacity.max(1),
            queue: Mutex::new(Queue {
                next_seq: head.head_seq + 1,
                pending: VecDeque::new(),
                in_flight: 0,
                lost: 0,
                failing: None,
                fatal: None,
                closing: false,
                committed: head.head_seq,
                waiters: BTreeMap::new(),
            }),
            wake: Notify::new(),
            checkpoints: Mutex::new(None),
        });
        let writer = tokio::spawn(write(shared.clone(), head.head_seq, head.head_hash));
        Ok(AuditLog {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Signs the committed head into `writer`'s file at most every `every` while records are
    /// committed, and when the log closes.
    pub fn checkpoint_to(&self, writer: crate::checkpoint::Writer, every: Duration) {
        *self
            .shared
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Checkpoints {
            writer,
            every,
            last: None,
        });
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chain this log writes (the host id).
    pub fn chain(&self) -> &str {
        &self.shared.chain
    }

    /// Whether a new action may start: the log is writable and has room for its records.
    pub fn ready(&self) -> Result<(), AuditError> {
        let q = self.queue();
        self.room(&q)
    }

    fn room(&self, q: &Queue) -> Result<(), AuditError> {
        if let Some(why) = &q.fatal {
            return Err(AuditError::Stopped(why.clone()));
        }
        if q.queued() >= self.shared.capacity {
            return Err(AuditError::Full {
                queued: q.queued(),
                why: q
                    .failing
                    .clone()
                    .unwrap_or_else(|| "it commits slower than records arrive".into()),
            });
        }
        Ok(())
    }

    /// Queues the record of an action about to be acknowledged; refused when the log is full or
    /// stopped (the action must then be refused too).
    pub fn append(&self, record: Record) -> Result<Ticket, AuditError> {
        let seq = {
            let mut q = self.queue();
            self.room(&q)?;
            if q.closing {
                return Err(AuditError::Stopped("the daemon is stopping".into()));
            }
            q.push_lost();
            q.push(record)
        };
        self.shared.wake.notify_one();
        Ok(Ticket(seq))
    }

    /// Queues a record of what happened anyway (a violation, an exit): it queues past the bound,
    /// up to twice it; beyond that it is counted as lost (and logged now, and the count recorded
    /// when there is room).
    pub fn append_always(&self, record: Record) -> Option<Ticket> {
        let seq = {
            let mut q = self.queue();
            if q.fatal.is_some() || q.closing || q.queued() >= 2 * self.shared.capacity {
                q.lost += 1;
                tracing::error!(
                    kind = %record.kind,
                    plugin = ?record.plugin,
                    lost = q.lost,
                    "audit record lost: the audit queue is full ({})",
                    record.detail
                );
                return None;
            }
            q.push_lost();
            q.push(record)
        };
        self.shared.wake.notify_one();
        Some(Ticket(seq))
    }

    /// Why [`AuditLog::append_always`] could not queue a record.
    pub fn refusal(&self) -> AuditError {
        let q = self.queue();
        match (&q.fatal, q.closing) {
            (Some(why), _) => AuditError::Stopped(why.clone()),
            (None, true) => AuditError::Stopped("the daemon is stopping".into()),
            (None, false) => AuditError::Full {
                queued: q.queued(),
                why: q
                    .failing
                    .clone()
                    .unwrap_or_else(|| "it commits slower than records arrive".into()),
            },
        }
    }

    /// Waits until the record `ticket` is committed, at most `within`.
    pub async fn durable(&self, ticket: Ticket, within: Duration) -> Result<(), AuditError> {
        let woken = {
            let mut q = self.queue();
            if q.committed >= ticket.0 {
                return Ok(());
            }
            if let Some(why) = &q.fatal {
                return Err(AuditError::Stopped(why.clone()));
            }
            let (tx, rx) = oneshot::channel();
            q.waiters.entry(ticket.0).or_default().push(tx);
            rx
        };
        let reached = matches!(tokio::time::timeout(within, woken).await, Ok(Ok(())));
        let q = self.queue();
        if reached || q.committed >= ticket.0 {
            return Ok(());
        }
        if let Some(why) = &q.fatal {
            return Err(AuditError::Stopped(why.clone()));
        }
        Err(AuditError::Late {
            within,
            why: q
                .failing
                .clone()
                .unwrap_or_else(|| "the database is slow".into()),
        })
    }

    /// Appends `record` and waits for its commit.
    pub async fn record(&self, record: Record, within: Duration) -> Result<(), AuditError> {
        let ticket = self.append(record)?;
        self.durable(ticket, within).await
    }

    pub fn stats(&self) -> Stats {
        let q = self.queue();
        Stats {
            chain: self.shared.chain.clone(),
            location: self.shared.storage.location(),
            committed: q.committed,
            queued: q.queued(),
            capacity: self.shared.capacity,
            failing: q.failing.clone(),
            stopped: q.fatal.clone(),
        }
    }

    /// Commits what is queued (waiting at most `within`) and stops the writer. Returns the
    /// records left uncommitted.
    pub async fn close(&self, within: Duration) -> usize {
        {
            let mut q = self.queue();
            q.closing = true;
        }
        self.shared.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut writer) = writer {
            if tokio::time::timeout(within, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        let q = self.queue();
        q.queued()
    }
}

/// Whether the records after `head` in the database are `batch` (committed by us).
async fn ours(shared: &Shared, head: i64, batch: &[Entry]) -> Result<bool, StateError> {
    let found = shared
        .storage
        .entries(&shared.chain, head, batch.len() as u32)
        .await?;
    Ok(found.len() == batch.len()
        && found
            .iter()
            .zip(batch)
            .all(|(f, b)| f.seq == b.seq && f.hash == b.hash))
}

/// The writer: takes what is queued, commits it in one transaction, tells the waiters; on a
/// failure keeps the batch and tries again, waiting longer each time (at most half a second).
async fn write(shared: Arc<Shared>, mut head: i64, mut last_hash: String) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let taken: Option<Vec<(i64, Record)>> = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.pending.is_empty() {
                if q.closing {
                    drop(q);
                    checkpoint(&shared, head, &last_hash, true);
                    return;
                }
                None
            } else {
                let n = q.pending.len().min(MAX_BATCH);
                q.in_flight = n;
                Some(q.pending.drain(..n).collect())
            }
        };
        let Some(taken) = taken else {
            shared.wake.notified().await;
            continue;
        };
        // Chained here, outside the queue's lock, in the order their numbers were given.
        let batch: Arc<[Entry]> = taken
            .into_iter()
            .map(|(seq, record)| {
                let entry = Entry::seal(&shared.chain, seq, &last_hash, record);
                last_hash.clone_from(&entry.hash);
                entry
            })
            .collect();
        loop {
            match shared
                .storage
                .append(&shared.chain, head, batch.clone())
                .await
            {
                Ok(()) => {
                    head = batch.last().map_or(head, |e| e.seq);
                    checkpoint(&shared, head, &last_hash, false);
                    if let Some(why) = committed(&shared, head) {
                        tracing::info!(
                            "audit log: committing again ({} after: {why})",
                            shared.storage.location()
                        );
                    }
                    backoff = Duration::from_millis(20);
                    break;
                }
                // A commit whose answer was lost (the connection broke after the server
                // committed) looks like another writer: it is ours when the records there are
                // this batch.
                Err(StateError::ChainTaken { .. })
                    if matches!(ours(&shared, head, &batch).await, Ok(true)) =>
                {
                    head = batch.last().map_or(head, |e| e.seq);
                    committed(&shared, head);
                    backoff = Duration::from_millis(20);
                    break;
                }
                // Unsure whether it was ours (the check itself failed): try again.
                Err(StateError::ChainTaken { .. })
                    if ours(&shared, head, &batch).await.is_err() =>
                {
                    note_failure(&shared, "cannot tell whether a commit went through".into());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // Another writer, a record the database refuses, or another daemon holding the
                // host: retrying cannot help, and going on would fork or lose the chain.
                Err(
                    e @ (StateError::ChainTaken { .. }
                    | StateError::Corrupt { .. }
                    | StateError::HostTaken { .. }),
                ) => {
                    tracing::error!("audit log: {e}: nothing more is written");
                    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                    q.fatal = Some(e.to_string());
                    // Dropping their senders wakes the waiters: they see the log stopped.
                    q.waiters.clear();
                    return;
                }
                Err(e) => {
                    let why = e.to_string();
                    note_failure(&shared, why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Signs `(head, hash)` when checkpoints are kept and the last is older than their interval
/// (or `now`). A failure is logged and tried again at the next commit: the records themselves
/// are committed; the checkpoint only vouches for them.
fn checkpoint(shared: &Shared, head: i64, hash: &str, now: bool) {
    let mut guard = shared.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = guard.as_mut() else {
        return;
    };
    let due = match c.last {
        None => true,
        Some((at, seq)) => seq != head && (now || at.elapsed() >= c.every),
    };
    if !due || head == 0 {
        return;
    }
    match c.writer.write(&shared.chain, head, hash) {
        Ok(_) => c.last = Some((std::time::Instant::now(), head)),
        Err(e) => tracing::error!(
            "audit log: cannot write a checkpoint to {}: {e}",
            c.writer.path().display()
        ),
    }
}

/// Records `head` as committed and wakes the waiters of every record up to it, each once.
/// Returns why commits had failed before, if they had.
fn committed(shared: &Shared, head: i64) -> Option<String> {
    let (done, recovered) = {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.in_flight = 0;
        q.committed = head;
        let later = q.waiters.split_off(&(head + 1));
        (std::mem::replace(&mut q.waiters, later), q.failing.take())
    };
    for tx in done.into_values().flatten() {
        let _ = tx.send(());
    }
    recovered
}

fn note_failure(shared: &Shared, why: String) {
    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    if q.failing.as_deref() != Some(why.as_str()) {
        tracing::error!(
            queued = q.queued(),
            "audit log: cannot commit, retrying: {why}"
        );
    }
    q.failing = Some(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::verify;

    #[tokio::test]
    async fn records_commit_in_order_and_chain() {
        let storage: Arc<dyn Storage> = Arc::new(crate::memory::Memory::new());
        let log = AuditLog::open(storage.clone(), "h1", 100).await.unwrap();
        let mut last = None;
        for n in 0..50 {
            let t = log
                .append(Record::new(
                    "call",
                    Some("p"),
                    &serde_json::json!({ "n": n }),
                ))
                .unwrap();
            last = Some(t);
        }
        log.durable(last.unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let head = storage.open_chain("h1").await.unwrap();
        assert_eq!(head.head_seq, 50);
        let v = verify(storage.as_ref(), &head).await.unwrap();
        assert_eq!((v.records, v.broken), (50, None));
        // A second log on the same chain resumes it.
        log.close(Duration::from_secs(5)).await;
        let log = AuditLog::open(storage.clone(), "h1", 100).await.unwrap();
        log.record(
            Record::new("daemon", None, &serde_json::json!({})),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let head = storage.open_chain("h1").await.unwrap();
        let v = verify(storage.as_ref(), &head).await.unwrap();
        assert_eq!((v.records, v.broken), (51, None));
    }
}
