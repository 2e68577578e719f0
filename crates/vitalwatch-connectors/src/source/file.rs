//! The file source: `replay` of JSON-lines recordings, resumable.
//!
//! Where it sits: a source like any other, feeding a [`SourceHandle`]. Each file is a
//! recording judged by its own clock ([`ReplayAdmission`]). Every
//! `pipeline.checkpoint_interval` the source sends a checkpoint behind its records; once
//! the checkpoint is durable on both paths it commits the file's position (byte offset,
//! checkpoint number, fingerprint of the first 4 KiB) to the alert store. A replay of the
//! same file later — after a crash, or a second time — first removes the warehouse files
//! no committed checkpoint covers ([`remove_uncommitted`]), then continues from the
//! position: no row is archived twice, none is lost.

use std::io::{BufRead, BufReader, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vitalwatch_core::alert::stable_hash;
use vitalwatch_core::clock::{Offered, Reference, StreamClock, TimeConfig, TimeError};
use vitalwatch_core::codec::{InputFormat, decode_record};
use vitalwatch_core::model::{DeadLetter, Observation};

use super::{IngestMsg, Outcome, SourceHandle, Tracker, stamp_untimed, wall_now};
use crate::store::{AlertStore, SourcePosition, StoreError};
use crate::warehouse::WarehouseError;
use crate::warehouse::recovery::{position_tag, remove_uncommitted, stream_id};

/// What can stop a replay.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// A file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The alert store (source positions) failed.
    #[error("alert store")]
    Store(#[from] StoreError),
    /// Warehouse files of an interrupted replay could not be removed.
    #[error("cannot remove warehouse files of an interrupted replay")]
    Warehouse(#[from] WarehouseError),
    /// The pipeline stopped taking input.
    #[error("the pipeline stopped")]
    Closed,
    /// A checkpoint failed: nothing is lost, the same replay later continues from `resume`.
    #[error(
        "checkpoint failed: {why}\nnothing is lost: run the same command again once the cause is fixed; it continues from byte {resume}"
    )]
    Checkpoint {
        /// What failed.
        why: String,
        /// The committed byte offset a rerun continues from.
        resume: u64,
    },
    /// The pipeline did not confirm the last checkpoints in time.
    #[error("the pipeline did not confirm the last {0} checkpoint(s) within an hour")]
    Unconfirmed(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileSourceError + '_ {
    move |source| FileSourceError::Io {
        path: path.to_owned(),
        source,
    }
}

impl From<super::Closed> for FileSourceError {
    fn from(_: super::Closed) -> Self {
        FileSourceError::Closed
    }
}

/// Observations per batch sent to the engine.
pub const REPLAY_BATCH: usize = 1024;

/// Where a replayed file stands, carried back by its checkpoints.
#[derive(Debug, Clone)]
struct FileCheckpoint {
    /// `None` for standard input (not resumable).
    position: Option<SourcePosition>,
}

/// The file source of `replay`: reads files, sends their records and checkpoints, and
/// commits each file's position once a checkpoint is durable, so the same command after
/// a crash (or a second time) carries on where the durable part ends.
pub struct FileSource {
    h: SourceHandle,
    tracker: Tracker<FileCheckpoint>,
    store: Box<dyn AlertStore>,
    warehouse: PathBuf,
    interval: std::time::Duration,
    from_start: bool,
    /// Sources replayed so far in this run.
    seen: std::collections::HashSet<String>,
}

/// Checkpoints in flight before the reader waits for the oldest.
const MAX_OUTSTANDING_CHECKPOINTS: usize = 4;

/// Bytes at the start of a file that identify it (a replaced file starts over).
const FINGERPRINT_BYTES: u64 = 4096;

fn fingerprint(path: &Path) -> Result<String, FileSourceError> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(FINGERPRINT_BYTES).read_to_end(&mut head))
        .map_err(io(path))?;
    Ok(format!("{:016x}", stable_hash(&[&head])))
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("warehouse", &self.warehouse)
            .field("interval", &self.interval)
            .field("from_start", &self.from_start)
            .field("outstanding", &self.tracker.outstanding())
            .finish()
    }
}

impl FileSource {
    /// A file source feeding `h`, keeping positions in `store`, removing uncommitted files
    /// under the warehouse root `warehouse`, asking for a checkpoint every `interval`.
    /// `from_start`: replay files from their first byte, replacing what they archived.
    pub fn new(
        h: SourceHandle,
        store: Box<dyn AlertStore>,
        warehouse: PathBuf,
        interval: std::time::Duration,
        from_start: bool,
    ) -> Self {
        FileSource {
            h,
            tracker: Tracker::default(),
            store,
            warehouse,
            interval,
            from_start,
            seen: Default::default(),
        }
    }

    /// Where to start `path`: the committed position of the same file, or the beginning
    /// (removing the warehouse files no committed checkpoint covers either way).
    fn start_position(
        &mut self,
        path: &Path,
    ) -> Result<(SourcePosition, Option<String>), FileSourceError> {
        let canonical = path.canonicalize().map_err(io(path))?;
        let source = format!("file:{}", canonical.display());
        if !self.seen.insert(source.clone()) {
            // The same file twice in one command: its earlier pass must be committed
            // before this one reads where it got to.
            self.finish()?;
        }
        let stream = stream_id(&source);
        let print = fingerprint(path)?;
        let size = std::fs::metadata(path).map_err(io(path))?.len();
        let stored = self.store.source_position(&source)?;
        let mut note = None;
        let mut start = SourcePosition {
            source: source.clone(),
            checkpoint: stored.as_ref().map_or(0, |p| p.checkpoint),
            offset: 0,
            fingerprint: print.clone(),
            at: wall_now(),
        };
        let committed = if self.from_start {
            // Every earlier row of this file goes; the rows are written again.
            self.store.forget_source_position(&source)?;
            start.checkpoint = 0;
            None
        } else {
            if let Some(p) = &stored {
                if p.fingerprint == print && p.offset <= size {
                    start.offset = p.offset;
                    if p.offset > 0 {
                        note = Some(format!(
                            "{}: {} of {} bytes already replayed and durable; continuing from there (--from-start replays it again)",
                            path.display(),
                            p.offset,
                            size
                        ));
                    }
                } else {
                    note = Some(format!(
                        "{}: not the file replayed under this name before (its content changed); replaying it from the start",
                        path.display()
                    ));
                }
            }
            Some(start.checkpoint)
        };
        let removed = remove_uncommitted(&self.warehouse, &stream, committed)?;
        if removed.uncommitted > 0 {
            tracing::info!(
                file = %path.display(),
                files = removed.uncommitted,
                "removed warehouse files no committed checkpoint covers; their rows are read again"
            );
        }
        Ok((start, note))
    }

    /// Replays one file (`-`: standard input, not resumable) to its end; `progress` hears
    /// of bytes as they are read. Returns a note for the user when the file continued
    /// from an earlier replay or started over.
    pub fn replay_file(
        &mut self,
        path: &Path,
        format: InputFormat,
        progress: &dyn Fn(u64),
        adm: &mut ReplayAdmission,
    ) -> Result<Option<String>, FileSourceError> {
        adm.new_recording();
        let (mut input, name, mut position, note): (Box<dyn BufRead>, _, _, _) =
            if path.as_os_str() == "-" {
                let input = BufReader::with_capacity(1 << 20, std::io::stdin());
                (Box::new(input), "stdin".to_owned(), None, None)
            } else {
                let (start, note) = self.start_position(path)?;
                let mut f = std::fs::File::open(path).map_err(io(path))?;
                f.seek(std::io::SeekFrom::Start(start.offset))
                    .map_err(io(path))?;
                progress(start.offset);
                let input = BufReader::with_capacity(1 << 20, f);
                (
                    Box::new(input),
                    path.display().to_string(),
                    Some(start),
                    note,
                )
            };
        let mut offset = position.as_ref().map_or(0, |p| p.offset);
        let mut line = Vec::with_capacity(512);
        let mut received = 0u64;
        let mut unreported = 0u64;
        let mut wall = wall_now();
        let mut last_checkpoint = Instant::now();
        loop {
            line.clear();
            let n = input.read_until(b'\n', &mut line).map_err(io(path))?;
            if n == 0 {
                break;
            }
            // The byte offset names the record in dead letters: it stays right when a
            // replay resumes in the middle of the file.
            let at_byte = offset;
            offset += n as u64;
            // The bar moves once per batch: per line it cost 1.5 % of a replay.
            unreported += n as u64;
            let rec = line.trim_ascii();
            if rec.is_empty() {
                continue;
            }
            received += 1;
            let source = || format!("replay:{name}:byte {at_byte}");
            match decode_record(rec, format, wall) {
                Ok(mut o) => {
                    stamp_untimed(&mut o, wall, || self.h.stamps.next(wall));
                    let at = o.ingested_at;
                    adm.admit(o, |reason| DeadLetter::new(at, source(), reason, rec));
                }
                Err(e) => adm
                    .dead
                    .push(DeadLetter::new(wall, source(), e.to_string(), rec)),
            }
            if adm.batch.len() >= REPLAY_BATCH {
                adm.send(&self.h, &mut received)?;
                progress(std::mem::take(&mut unreported));
                wall = wall_now();
                // A checkpoint covers whole records only, and none held back by the
                // admission clock (it may still turn out to be an outlier).
                if last_checkpoint.elapsed() >= self.interval && adm.held.is_none() {
                    self.checkpoint(&mut position, offset)?;
                    last_checkpoint = Instant::now();
                }
            }
        }
        progress(unreported);
        // The end of a recording settles what its clock still held.
        adm.new_recording();
        adm.send(&self.h, &mut received)?;
        // The next file's records queue behind this checkpoint (no pipeline bubble between
        // files); [`FileSource::finish`] waits for the last ones.
        self.checkpoint(&mut position, offset)?;
        Ok(note)
    }

    /// Waits until every checkpoint sent is decided and commits the positions: call it
    /// after the last file. Fails if one failed, or none was confirmed within an hour.
    pub fn finish(&mut self) -> Result<(), FileSourceError> {
        let done = self.tracker.drain(std::time::Duration::from_secs(3600));
        self.settle(done)?;
        match self.tracker.outstanding() {
            0 => Ok(()),
            n => Err(FileSourceError::Unconfirmed(n)),
        }
    }

    /// Sends a checkpoint for everything read up to `offset`; commits what is decided.
    fn checkpoint(
        &mut self,
        position: &mut Option<SourcePosition>,
        offset: u64,
    ) -> Result<(), FileSourceError> {
        let (tag, payload) = match position {
            Some(p) => {
                p.checkpoint += 1;
                p.offset = offset;
                let stream = stream_id(&p.source);
                (
                    Some(position_tag(&stream, p.checkpoint)),
                    FileCheckpoint {
                        position: Some(p.clone()),
                    },
                )
            }
            None => (None, FileCheckpoint { position: None }),
        };
        let cp = self.tracker.mark(tag, payload);
        self.h
            .ingest
            .send(IngestMsg::Checkpoint(cp))
            .map_err(|_| FileSourceError::Closed)?;
        let wait = if self.tracker.outstanding() > MAX_OUTSTANDING_CHECKPOINTS {
            std::time::Duration::from_secs(60)
        } else {
            std::time::Duration::ZERO
        };
        let done = self.tracker.poll(wait);
        self.settle(done)
    }

    /// Commits the positions of committed checkpoints; stops at a failed one.
    fn settle(&mut self, done: Vec<(FileCheckpoint, Outcome)>) -> Result<(), FileSourceError> {
        for (cp, outcome) in done {
            self.h.count_checkpoint(&outcome);
            match outcome {
                Outcome::Committed => {
                    if let Some(mut p) = cp.position {
                        p.at = wall_now();
                        self.store.commit_source_position(&p)?;
                    }
                }
                Outcome::Failed(why) => {
                    let resume = match &cp.position {
                        Some(p) => self
                            .store
                            .source_position(&p.source)?
                            .map_or(0, |p| p.offset),
                        None => 0,
                    };
                    return Err(FileSourceError::Checkpoint { why, resume });
                }
            }
        }
        Ok(())
    }
}

/// Judges a replay's readings against the recording's own clock ([`StreamClock`]): too
/// old, or a jump ahead that no later reading confirms, is a dead letter; a confirmed jump
/// (a gap in the recording) is accepted with the reading that confirmed it.
#[derive(Debug)]
pub struct ReplayAdmission {
    time: TimeConfig,
    clock: StreamClock,
    /// The reading held while its jump waits for confirmation, and its dead letter if it
    /// turns out to be an outlier.
    held: Option<(Observation, DeadLetter)>,
    batch: Vec<Observation>,
    dead: Vec<DeadLetter>,
}

impl ReplayAdmission {
    /// A fresh admission under these limits.
    pub fn new(time: TimeConfig) -> Self {
        ReplayAdmission {
            clock: StreamClock::new(time.max_future),
            time,
            held: None,
            batch: Vec::with_capacity(REPLAY_BATCH),
            dead: Vec::new(),
        }
    }

    /// Settles the held reading: into the batch, or a dead letter.
    fn settle(&mut self, verdict: Offered) {
        if let Some((o, mut dl)) = self.held.take() {
            if verdict == Offered::Accepted {
                self.batch.push(o);
            } else {
                dl.reason = TimeError::Outlier {
                    observed: o.observed_at,
                    reference: self.clock.confirmed().unwrap_or(o.observed_at),
                }
                .to_string();
                self.dead.push(dl);
            }
        }
    }

    /// Admits one decoded observation; `dead_letter` makes its dead letter (with a
    /// reason), should it need one.
    fn admit(&mut self, o: Observation, dead_letter: impl FnOnce(String) -> DeadLetter) {
        if let Some(now) = self.clock.confirmed()
            && o.observed_at <= now
            && let Err(e) = self.time.admit(o.observed_at, now, Reference::StreamClock)
        {
            self.dead.push(dead_letter(e.to_string()));
            return;
        }
        let offer = self.clock.offer(o.observed_at);
        if let Some(v) = offer.earlier {
            self.settle(v);
        }
        match offer.this {
            Offered::Accepted => self.batch.push(o),
            Offered::Deferred => self.held = Some((o, dead_letter(String::new()))),
            Offered::Outlier => {}
        }
    }

    /// Starts the next recording: settles the reading the last one still held, and a
    /// fresh clock. (Ingest stamps come from the pipeline's one `IngestStamps`, strictly
    /// increasing across recordings.)
    pub fn new_recording(&mut self) {
        if let Some(v) = self.clock.finish() {
            self.settle(v);
        }
        self.clock = StreamClock::new(self.time.max_future);
    }

    /// Sends the batch and dead letters gathered so far, counting `received` records.
    fn send(&mut self, h: &SourceHandle, received: &mut u64) -> Result<(), FileSourceError> {
        h.received(std::mem::take(received) as usize);
        h.dead_letters(std::mem::take(&mut self.dead))?;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(REPLAY_BATCH));
        h.send(batch)?;
        Ok(())
    }
}
