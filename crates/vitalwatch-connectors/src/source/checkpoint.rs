//! Checkpoints: how a source learns that what it sent is durable.
//!
//! Where it sits: a source puts a [`Checkpoint`] marker into the same first-in-first-out
//! ingest channel as its data. The engine forwards it to the alert path and the archive
//! path after the findings of everything before it, so when the alert path has committed
//! its store transaction and the archive path has published its Parquet files, every
//! reading and alert event before the marker is durable. Each path confirms; a
//! [`Tracker`] waits for both and reports the outcome to the source, in order: a file
//! source then commits its position, an HTTP request with `?wait=durable` answers 202.
//! (The same idea as Flink's barriers and the acknowledgements of Vector's Kafka source.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Which path confirms a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The alert store (alert events and their outbox rows).
    Alerts,
    /// The warehouse (readings, dead letters, unclassified readings).
    Archive,
}

impl Path {
    fn as_str(self) -> &'static str {
        match self {
            Path::Alerts => "alert store",
            Path::Archive => "warehouse",
        }
    }
}

/// One path's answer.
#[derive(Debug)]
struct Confirmation {
    id: u64,
    path: Path,
    result: Result<(), String>,
}

/// A checkpoint marker, shared by the paths it travels.
#[derive(Debug)]
pub struct Checkpoint {
    id: u64,
    /// The warehouse file tag for what this checkpoint publishes (a resumable source's
    /// stream and position), or `None` for the run's own name.
    pub tag: Option<String>,
    reply: flume::Sender<Confirmation>,
}

impl Checkpoint {
    /// A path reports that everything before the marker is durable, or why not.
    pub fn confirm(&self, path: Path, result: Result<(), String>) {
        // A source that stopped waiting (an HTTP client that hung up) is not an error.
        let _ = self.reply.send(Confirmation {
            id: self.id,
            path,
            result,
        });
    }
}

/// What became of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything before it is durable on both paths.
    Committed,
    /// A path failed; the message names it and the cause.
    Failed(String),
}

/// One outstanding checkpoint.
#[derive(Debug)]
struct Pending<P> {
    id: u64,
    payload: P,
    alerts: Option<Result<(), String>>,
    archive: Option<Result<(), String>>,
}

/// Hands out checkpoints for one source and reports their outcomes in the order they
/// were made. `P` is what the source wants back (a file position, a reply channel).
#[derive(Debug)]
pub struct Tracker<P> {
    next_id: u64,
    tx: flume::Sender<Confirmation>,
    rx: flume::Receiver<Confirmation>,
    pending: VecDeque<Pending<P>>,
}

impl<P> Default for Tracker<P> {
    fn default() -> Self {
        let (tx, rx) = flume::unbounded();
        Tracker {
            next_id: 1,
            tx,
            rx,
            pending: VecDeque::new(),
        }
    }
}

impl<P> Tracker<P> {
    /// A new checkpoint carrying `payload` back; send the marker down the ingest channel.
    pub fn mark(&mut self, tag: Option<String>, payload: P) -> Arc<Checkpoint> {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending {
            id,
            payload,
            alerts: None,
            archive: None,
        });
        Arc::new(Checkpoint {
            id,
            tag,
            reply: self.tx.clone(),
        })
    }

    /// Checkpoints still waiting for a path.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Takes the confirmations that arrived (waiting up to `wait` for the first) and
    /// returns the checkpoints now decided, oldest first.
    pub fn poll(&mut self, wait: Duration) -> Vec<(P, Outcome)> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let first = if wait.is_zero() {
            self.rx.try_recv().ok()
        } else {
            self.rx.recv_timeout(wait).ok()
        };
        for c in first.into_iter().chain(self.rx.try_iter()) {
            if let Some(p) = self.pending.iter_mut().find(|p| p.id == c.id) {
                let slot = match c.path {
                    Path::Alerts => &mut p.alerts,
                    Path::Archive => &mut p.archive,
                };
                *slot = Some(c.result.map_err(|e| format!("{}: {e}", c.path.as_str())));
            }
        }
        let mut done = Vec::new();
        while let Some(p) = self.pending.front() {
            let outcome = match (&p.alerts, &p.archive) {
                (Some(Err(e)), _) | (_, Some(Err(e))) => Outcome::Failed(e.clone()),
                (Some(Ok(())), Some(Ok(()))) => Outcome::Committed,
                _ => break,
            };
            if let Some(p) = self.pending.pop_front() {
                done.push((p.payload, outcome));
            }
        }
        done
    }

    /// Waits until every outstanding checkpoint is decided (or `timeout` passes); returns
    /// the decided ones, oldest first.
    pub fn drain(&mut self, timeout: Duration) -> Vec<(P, Outcome)> {
        let deadline = std::time::Instant::now() + timeout;
        let mut done = Vec::new();
        while !self.pending.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            done.extend(self.poll(left.min(Duration::from_millis(200))));
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_commits_only_when_both_paths_confirm_and_in_order() {
        let mut t = Tracker::default();
        let a = t.mark(None, "a");
        let b = t.mark(None, "b");
        b.confirm(Path::Alerts, Ok(()));
        b.confirm(Path::Archive, Ok(()));
        a.confirm(Path::Alerts, Ok(()));
        assert!(
            t.poll(Duration::ZERO).is_empty(),
            "a waits for the warehouse"
        );
        a.confirm(Path::Archive, Ok(()));
        assert_eq!(
            t.poll(Duration::from_millis(10)),
            vec![("a", Outcome::Committed), ("b", Outcome::Committed)]
        );
        let c = t.mark(None, "c");
        c.confirm(Path::Archive, Err("rename: read-only file system".into()));
        assert_eq!(
            t.poll(Duration::from_millis(10)),
            vec![(
                "c",
                Outcome::Failed("warehouse: rename: read-only file system".into())
            )],
            "a failure decides at once"
        );
        assert_eq!(t.outstanding(), 0);
    }
}
