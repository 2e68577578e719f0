//! The rolling Parquet writer: the last stage of the archive path.
//!
//! Rows arrive in slices from the pipeline and are appended straight into Arrow builders,
//! one set per `(table, hour)` partition. When a table has `batch_rows` rows buffered they
//! become a [`RecordBatch`] per partition and go into that partition's open file (one
//! `ArrowWriter` each, which itself gathers row groups). A file closes when it reaches
//! `roll_rows`, when [`ParquetSink::tick`] finds it older than `roll_interval`, or at a
//! checkpoint: footer and fsync, still under its hidden in-progress name (*staged*).
//! Staged files are *published* (renamed into place, directory fsynced) together at
//! [`ParquetSink::checkpoint`]; only then do readers see them.
//!
//! Exactly-once across a crash (see [`super::recovery`]): files published for a
//! resumable source carry that source's stream and checkpoint position in their name. A
//! restart removes the files past the position the source committed, and the source
//! re-reads from there, so no row is lost and none is archived twice. Live sources that
//! cannot re-send (HTTP) publish under the run's own name, never removed.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Array, Float64Builder, Int32Builder,
    Int64Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::EnabledStatistics;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;
use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::engine::ScoreRecord;
use vitalwatch_core::model::{DeadLetter, Observation, Patient, Timestamp, Unclassified};

use super::schema::{
    ALERTS, AUDIT, DEAD_LETTERS, PATIENTS, SCORES, UNCLASSIFIED, UTC, VITALS, check_schema,
    hour_key, partition_dir, table_schema,
};
use super::{TableStats, WarehouseConfig, WarehouseError, WarehouseStats};
use crate::store::AuditEntry;

/// File sequence shared by every sink in the process, so two sinks created in the same
/// microsecond still never pick the same name.
static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Open files per table beyond which the oldest are closed (see `Table::close_excess`).
const MAX_OPEN_FILES_PER_TABLE: usize = 32;

/// Rolling Parquet writer with one open file per `(table, date, hour)` partition.
///
/// Not thread-safe by design: the archive task owns it. Dropping it without
/// [`ParquetSink::close`] closes the files best-effort and logs failures.
///
/// Errors: a `write_*` call that fails may have accepted part of its slice, and a file
/// that fails mid-write is discarded with the rows it held. Rows count as stored only once
/// [`ParquetSink::roll`] (or `close`) succeeds, so a source that commits its position
/// after that replays whatever was lost: the warehouse is at-least-once.
pub struct ParquetSink {
    files: Files,
    /// Whether [`ParquetSink::tick`] publishes aged files under the run's name (live
    /// sources) or only stages them for the next checkpoint (resumable sources).
    publish_on_tick: bool,
    /// Rows lost since the last checkpoint (a file that failed mid-write).
    lost_rows: u64,
    vitals: Table<VitalRows>,
    alerts: Table<AlertRows>,
    dead_letters: Table<DeadLetterRows>,
    unclassified: Table<UnclassifiedRows>,
    audit: Table<AuditRows>,
    scores: Table<ScoreRows>,
    patients: Table<PatientRows>,
}

impl fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParquetSink")
            .field("root", &self.files.config.root)
            .field("run_id", &self.files.run_id)
            .field("open_files", &self.open_files())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ParquetSink {
    /// Checks the config, creates the root folder and fixes this run's file-name prefix.
    pub fn new(config: WarehouseConfig) -> Result<Self, WarehouseError> {
        if config.batch_rows == 0 || config.roll_rows == 0 {
            return Err(WarehouseError::Config(
                "batch_rows and roll_rows must be at least 1".into(),
            ));
        }
        let level = ZstdLevel::try_new(config.zstd_level).map_err(|e| {
            WarehouseError::Config(format!("zstd_level {}: {e}", config.zstd_level))
        })?;
        fs::create_dir_all(&config.root)
            .map_err(|e| WarehouseError::io("create", &config.root, e))?;
        // Row groups of at most 128 Ki rows: the writer holds a whole row group in memory,
        // and the default (1 Mi rows of wide alert rows) took hundreds of MB in a replay.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(128 * 1024));
        // Min/max statistics on these columns never prune anything (every row group of a
        // ward's stream holds every device and both ends of the vital and unit names, and
        // every alert group both ends of the event, state, rule and message names), yet
        // computing them was two string comparisons per row, a sixth of the archive's
        // time. Time, patient and alert id columns keep theirs.
        for column in [
            "device_id",
            "vital",
            "unit",
            "event",
            "state",
            "rule",
            "rule_key",
            "priority",
            "alert_message",
        ] {
            props = props
                .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
        }
        // Ingest stamps and alert ids are unique: a dictionary only fills up in each row
        // group (hashing and storing every value on the way) and falls back to plain
        // pages. Stamps are increasing too: deltas pack them into a few bits each.
        let props = props
            .set_column_dictionary_enabled(ColumnPath::from("alert_id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("ingested_at"), false)
            .set_column_encoding(
                ColumnPath::from("ingested_at"),
                Encoding::DELTA_BINARY_PACKED,
            );
        // In `vitals`, the vital and unit names follow each other in the same short cycle
        // (one per vital of each observation): zstd packs plain pages of them as small as
        // a dictionary's (13.73 → 13.70 MB for 4 M readings), without interning every value
        // (11 % of the archive thread's instructions). In `alerts` they come in no order,
        // and the dictionary stays.
        let vitals_props = props
            .clone()
            .set_column_dictionary_enabled(ColumnPath::from("vital"), false)
            .set_column_dictionary_enabled(ColumnPath::from("unit"), false)
            .build();
        let props = props.build();
        // Start time and pid: a restarted process (even one with a recycled pid) never
        // reuses a name, so a second run can never overwrite the first run's files.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let run_id = format!("{micros}-{}", std::process::id());
        tracing::debug!(root = %config.root.display(), %run_id, "parquet sink started");
        Ok(ParquetSink {
            files: Files {
                props,
                vitals_props,
                run_id,
                config,
            },
            publish_on_tick: true,
            lost_rows: 0,
            vitals: Table::new(VITALS)?,
            alerts: Table::new(ALERTS)?,
            dead_letters: Table::new(DEAD_LETTERS)?,
            unclassified: Table::new(UNCLASSIFIED)?,
            audit: Table::new(AUDIT)?,
            scores: Table::new(SCORES)?,
            patients: Table::new(PATIENTS)?,
        })
    }

    /// The configuration the sink runs with.
    pub fn config(&self) -> &WarehouseConfig {
        &self.files.config
    }

    /// Table `vitals`: one row per present vital, partitioned by `observed_at`.
    pub fn write_observations(&mut self, obs: &[Observation]) -> Result<(), WarehouseError> {
        let r = self
            .vitals
            .append(obs, &self.files, |o| o.observed_at.micros());
        self.publish_rolled(r)
    }

    /// Table `alerts`, partitioned by `alert_generated_time`; no personal data.
    pub fn write_alert_events<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a AlertEvent>,
    ) -> Result<(), WarehouseError> {
        let r = self
            .alerts
            .append(events, &self.files, |e| e.alert_generated_time.micros());
        self.publish_rolled(r)
    }

    /// Table `dead_letters`, partitioned by `received_at`.
    pub fn write_dead_letters(&mut self, dls: &[DeadLetter]) -> Result<(), WarehouseError> {
        let r = self
            .dead_letters
            .append(dls, &self.files, |d| d.received_at.micros());
        self.publish_rolled(r)
    }

    /// Table `unclassified`, partitioned by `observed_at`.
    pub fn write_unclassified(&mut self, u: &[Unclassified]) -> Result<(), WarehouseError> {
        let r = self
            .unclassified
            .append(u, &self.files, |r| r.observed_at.micros());
        self.publish_rolled(r)
    }

    /// Table `audit` (rows of the catalog's audit trail with their ids), partitioned by
    /// `at`.
    pub fn write_audit(&mut self, rows: &[(u64, AuditEntry)]) -> Result<(), WarehouseError> {
        let r = self.audit.append(rows, &self.files, |(_, a)| a.at.micros());
        self.publish_rolled(r)
    }

    /// Table `scores` (NEWS2 per patient over time), partitioned by `observed_at`.
    pub fn write_scores(&mut self, scores: &[ScoreRecord]) -> Result<(), WarehouseError> {
        let r = self
            .scores
            .append(scores, &self.files, |s| s.observed_at.micros());
        self.publish_rolled(r)
    }

    /// Table `patients`: a snapshot of the catalog's patients taken at `at` after an
    /// import described by `source`, partitioned by `at`. Names, addresses, phones and free
    /// text are left out: they stay in the catalog.
    pub fn write_patients(
        &mut self,
        at: Timestamp,
        source: &str,
        patients: &[Patient],
    ) -> Result<(), WarehouseError> {
        let source: Arc<str> = source.into();
        let rows: Vec<_> = patients
            .iter()
            .map(|p| (at, source.clone(), p.clone()))
            .collect();
        let r = self
            .patients
            .append(&rows, &self.files, |(at, _, _)| at.micros());
        self.publish_rolled(r)
    }

    /// Staged files are published only by [`ParquetSink::checkpoint`], never by
    /// [`ParquetSink::tick`] or on drop: what a resumable source's checkpoint has not
    /// covered must stay invisible, or re-reading it after a crash would archive it twice.
    pub fn publish_only_at_checkpoints(mut self) -> Self {
        self.publish_on_tick = false;
        self
    }

    /// A live sink publishes the files a write rolled (by `roll_rows`, or the cap on open
    /// files) at once; a checkpointed one keeps them staged for its next checkpoint.
    fn publish_rolled(&mut self, r: Result<(), WarehouseError>) -> Result<(), WarehouseError> {
        if self.publish_on_tick && self.staged_files() > 0 {
            let p = self.publish(None);
            r?;
            return p;
        }
        r
    }

    /// Periodic housekeeping: flushes the buffers, stages every file open longer than
    /// `roll_interval` and, for live sources, publishes what is staged under the run's
    /// name, so the warehouse lags the stream by at most about that much. Call it every
    /// few seconds.
    pub fn tick(&mut self) -> Result<(), WarehouseError> {
        let max_age = self.files.config.roll_interval;
        self.each_table(|t, files| {
            t.flush(files)?;
            t.close_files(files, Some(max_age))
        })?;
        if self.publish_on_tick {
            self.publish(None)?;
        }
        Ok(())
    }

    /// Encodes every buffered row into its open file. The rows are not visible (nor
    /// durable) until the file closes.
    pub fn flush(&mut self) -> Result<(), WarehouseError> {
        let r = self.each_table(|t, files| t.flush(files));
        self.publish_rolled(r)
    }

    /// Makes every row accepted so far durable and visible: flushes, closes every open
    /// file and publishes every staged one, named after `tag` (a resumable source's
    /// [`position_tag`](super::recovery::position_tag)) or, with `None`, after the run.
    ///
    /// `Ok` means every row accepted since the last successful checkpoint is in a
    /// published file: a source may commit its position. On error nothing is dropped that
    /// can be kept (rows whose file could not be created stay buffered, staged files whose
    /// rename failed stay staged) and the next checkpoint tries again; rows of a file that
    /// failed mid-write are lost to this sink, and the error says how many, so the source
    /// must re-send them (a resumable source re-reads from its last committed position).
    pub fn checkpoint(&mut self, tag: Option<&str>) -> Result<(), WarehouseError> {
        let closed = self.each_table(|t, files| {
            t.flush(files)?;
            t.close_files(files, None)
        });
        let published = self.publish(tag);
        let lost = std::mem::take(&mut self.lost_rows);
        closed?;
        published?;
        if lost > 0 {
            return Err(WarehouseError::Lost(lost));
        }
        Ok(())
    }

    /// A checkpoint under the run's name (see [`ParquetSink::checkpoint`]).
    pub fn roll(&mut self) -> Result<(), WarehouseError> {
        self.checkpoint(None)
    }

    /// Flushes and closes every file; returns the final counters. A sink that publishes
    /// only at checkpoints publishes nothing here: what its last checkpoint did not cover
    /// is read again by its source.
    pub fn close(mut self) -> Result<WarehouseStats, WarehouseError> {
        if self.publish_on_tick {
            self.roll()?;
        }
        Ok(self.stats())
    }

    /// Renames every staged file into place.
    fn publish(&mut self, tag: Option<&str>) -> Result<(), WarehouseError> {
        self.each_table(|t, files| t.publish(files, tag))
    }

    /// Rows and files per table so far.
    pub fn stats(&self) -> WarehouseStats {
        WarehouseStats {
            vitals: self.vitals.stats,
            alerts: self.alerts.stats,
            dead_letters: self.dead_letters.stats,
            unclassified: self.unclassified.stats,
            audit: self.audit.stats,
            scores: self.scores.stats,
            patients: self.patients.stats,
        }
    }

    /// Files closed but not yet published (invisible to readers).
    pub fn staged_files(&self) -> usize {
        self.vitals.staged.len()
            + self.alerts.staged.len()
            + self.dead_letters.staged.len()
            + self.unclassified.staged.len()
            + self.audit.staged.len()
            + self.scores.staged.len()
            + self.patients.staged.len()
    }

    /// Files currently open (in progress, invisible to readers).
    pub fn open_files(&self) -> usize {
        self.vitals.open_files()
            + self.alerts.open_files()
            + self.dead_letters.open_files()
            + self.unclassified.open_files()
            + self.audit.open_files()
            + self.scores.open_files()
            + self.patients.open_files()
    }

    /// Runs `f` on every table even if one fails (a broken `alerts` file must not keep
    /// `vitals` from being published); returns the first error.
    fn each_table(
        &mut self,
        mut f: impl FnMut(&mut dyn TableOps, &Files) -> Result<(), WarehouseError>,
    ) -> Result<(), WarehouseError> {
        let ParquetSink {
            files,
            vitals,
            alerts,
            dead_letters,
            unclassified,
            audit,
            scores,
            patients,
            lost_rows,
            ..
        } = self;
        let tables: [&mut dyn TableOps; 7] = [
            vitals,
            alerts,
            dead_letters,
            unclassified,
            audit,
            scores,
            patients,
        ];
        let mut first = None;
        for t in tables {
            let r = f(t, files);
            *lost_rows += t.take_lost();
            if let Err(e) = r {
                tracing::error!(table = t.name(), error = %e, "warehouse write failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        let pending = self.open_files() > 0
            || self.vitals.buffered + self.alerts.buffered > 0
            || self.dead_letters.buffered + self.unclassified.buffered > 0
            || self.audit.buffered + self.scores.buffered + self.patients.buffered > 0
            || self.staged_files() > 0;
        // A resumable source's rows past its last checkpoint stay hidden: it re-reads them.
        if pending && self.publish_on_tick {
            // Like BufWriter: finish what was accepted rather than strand it in hidden files.
            // Errors were already logged per table.
            let _ = self.roll();
        }
    }
}

/// The per-file settings and naming shared by all tables.
struct Files {
    config: WarehouseConfig,
    props: WriterProperties,
    /// The `vitals` table's: `props` with plain vital and unit names.
    vitals_props: WriterProperties,
    run_id: String,
}

impl Files {
    fn open(&self, table: &str, schema: &SchemaRef, key: i64) -> Result<OpenFile, WarehouseError> {
        // The rule that matters most to other readers is checked where files are born.
        check_schema(table, schema)?;
        let dir = partition_dir(&self.config.root, table, key);
        fs::create_dir_all(&dir).map_err(|e| WarehouseError::io("create", &dir, e))?;
        let seq = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".part-{}-{seq:06}.parquet.inprogress", self.run_id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| WarehouseError::io("create", &tmp, e))?;
        let props = if table == VITALS {
            &self.vitals_props
        } else {
            &self.props
        };
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))?;
        Ok(OpenFile {
            writer,
            tmp,
            dir,
            rows: 0,
            opened: Instant::now(),
        })
    }

    /// Footer and fsync: the file is complete and durable under its hidden name, ready to
    /// be published.
    fn close(&self, f: OpenFile, stats: &mut TableStats) -> Result<Staged, (WarehouseError, u64)> {
        let OpenFile {
            writer,
            tmp,
            dir,
            rows,
            ..
        } = f;
        let done = writer
            .into_inner()
            .map_err(WarehouseError::from)
            .and_then(|file| {
                file.sync_all()
                    .map_err(|e| WarehouseError::io("fsync", &tmp, e))?;
                Ok(file
                    .metadata()
                    .map_err(|e| WarehouseError::io("stat", &tmp, e))?
                    .len())
            });
        match done {
            Ok(bytes) => {
                stats.rows_staged += rows;
                Ok(Staged {
                    tmp,
                    dir,
                    rows,
                    bytes,
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err((e, rows))
            }
        }
    }

    /// Renames a staged file into place and fsyncs its directory: after this the file is
    /// complete under its final name even across a power cut, and never visible
    /// half-written.
    fn publish(
        &self,
        f: &Staged,
        tag: Option<&str>,
        stats: &mut TableStats,
    ) -> Result<(), WarehouseError> {
        let seq = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = match tag {
            Some(tag) => format!("part-{tag}-{}-{seq:06}.parquet", self.run_id),
            None => format!("part-{}-{seq:06}.parquet", self.run_id),
        };
        let dst = f.dir.join(name);
        // rename() silently replaces; the run id makes a clash impossible short of a bug,
        // and a bug must not destroy data.
        if dst.exists() {
            return Err(WarehouseError::io(
                "rename",
                &dst,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        fs::rename(&f.tmp, &dst).map_err(|e| WarehouseError::io("rename", &f.tmp, e))?;
        sync_dir(&f.dir)?;
        stats.rows_committed += f.rows;
        stats.files_closed += 1;
        stats.bytes_committed += f.bytes;
        tracing::debug!(file = %dst.display(), rows = f.rows, bytes = f.bytes, "warehouse file published");
        Ok(())
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), WarehouseError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WarehouseError::io("fsync", dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), WarehouseError> {
    // Directories cannot be opened for fsync here; the rename is as durable as the OS makes it.
    Ok(())
}

/// A file closed under its hidden name, waiting to be published.
struct Staged {
    tmp: PathBuf,
    dir: PathBuf,
    rows: u64,
    bytes: u64,
}

/// A file being written under its hidden in-progress name.
struct OpenFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    dir: PathBuf,
    rows: u64,
    opened: Instant,
}

/// The file went bad mid-write: a partial Parquet file is useless, so it is removed. Its
/// rows were never committed: the next checkpoint fails and says how many, so the source
/// re-sends them. Returns that count.
fn abandon(f: OpenFile, table: &str) -> u64 {
    tracing::error!(table, file = %f.tmp.display(), rows = f.rows, "abandoning warehouse file");
    let (tmp, rows) = (f.tmp.clone(), f.rows);
    drop(f);
    let _ = fs::remove_file(tmp);
    rows
}

/// One partition's buffer and open file.
struct Partition<R> {
    rows: R,
    /// Batches encoded but not yet written because no file could be opened (a full or
    /// read-only disk): kept, and written first once a file opens again.
    pending: Vec<RecordBatch>,
    file: Option<OpenFile>,
}

/// One table: partitions by hour key, with the last one used cached because consecutive
/// rows almost always share an hour.
struct Table<R> {
    name: &'static str,
    schema: SchemaRef,
    parts: Vec<Partition<R>>,
    keys: Vec<i64>,
    index: HashMap<i64, usize>,
    last: Option<(i64, usize)>,
    buffered: usize,
    /// Closed files waiting for the next publish.
    staged: Vec<Staged>,
    /// Rows lost in abandoned files since the sink last asked.
    lost: u64,
    stats: TableStats,
}

impl<R: Rows> Table<R> {
    /// Buffers rows in their hour partitions, encoding a batch whenever enough are buffered.
    fn append<'a>(
        &mut self,
        items: impl IntoIterator<Item = &'a R::Item>,
        files: &Files,
        time: impl Fn(&R::Item) -> i64,
    ) -> Result<(), WarehouseError>
    where
        R::Item: 'a,
    {
        for item in items {
            let i = self.slot(hour_key(time(item)));
            let n = self.parts[i].rows.push(item);
            self.accepted(n);
            if self.buffered >= files.config.batch_rows {
                self.flush(files)?;
            }
        }
        Ok(())
    }

    fn new(name: &'static str) -> Result<Self, WarehouseError> {
        let schema = table_schema(name).ok_or_else(|| WarehouseError::Schema {
            table: name.to_owned(),
            reason: "unknown table".into(),
        })?;
        check_schema(name, &schema)?;
        Ok(Table {
            name,
            schema,
            parts: Vec::new(),
            keys: Vec::new(),
            index: HashMap::new(),
            last: None,
            buffered: 0,
            staged: Vec::new(),
            lost: 0,
            stats: TableStats::default(),
        })
    }

    /// The index of the partition for an hour key, created on first use.
    #[inline]
    fn slot(&mut self, key: i64) -> usize {
        if let Some((k, i)) = self.last
            && k == key
        {
            return i;
        }
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.parts.push(Partition {
                    rows: R::default(),
                    pending: Vec::new(),
                    file: None,
                });
                self.keys.push(key);
                self.index.insert(key, self.parts.len() - 1);
                self.parts.len() - 1
            }
        };
        self.last = Some((key, i));
        i
    }

    #[inline]
    fn accepted(&mut self, n: usize) {
        self.buffered += n;
        self.stats.rows_accepted += n as u64;
    }

    fn open_files(&self) -> usize {
        self.parts.iter().filter(|p| p.file.is_some()).count()
    }

    /// Closes a file into the staged list (its rows count as lost if that fails).
    fn stage(&mut self, f: OpenFile, files: &Files) -> Result<(), WarehouseError> {
        let closed = files.close(f, &mut self.stats);
        keep_staged(&mut self.staged, &mut self.lost, closed)
    }

    /// Live data keeps one or two hours open, but a fast replay of history can touch
    /// hundreds of hours within one `roll_interval`; each open file holds a row group in
    /// memory and a file descriptor, so the oldest are closed beyond a fixed cap.
    fn close_excess(&mut self, files: &Files) -> Result<(), WarehouseError> {
        let open = self.open_files();
        if open <= MAX_OPEN_FILES_PER_TABLE {
            return Ok(());
        }
        let mut by_age: Vec<(Instant, usize)> = (self.parts.iter().enumerate())
            .filter_map(|(i, p)| p.file.as_ref().map(|f| (f.opened, i)))
            .collect();
        by_age.sort_unstable();
        let mut first = None;
        for &(_, i) in &by_age[..open - MAX_OPEN_FILES_PER_TABLE] {
            if let Some(f) = self.parts[i].file.take()
                && let Err(e) = self.stage(f, files)
            {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Keeps a closed file for the next publish; a close that failed lost its rows.
fn keep_staged(
    staged: &mut Vec<Staged>,
    lost: &mut u64,
    closed: Result<Staged, (WarehouseError, u64)>,
) -> Result<(), WarehouseError> {
    match closed {
        Ok(s) => {
            staged.push(s);
            Ok(())
        }
        Err((e, rows)) => {
            *lost += rows;
            Err(e)
        }
    }
}

/// What the sink does to every table, whatever its row type.
trait TableOps {
    fn name(&self) -> &'static str;
    fn flush(&mut self, files: &Files) -> Result<(), WarehouseError>;
    /// Publishes every staged file; those that fail stay staged.
    fn publish(&mut self, files: &Files, tag: Option<&str>) -> Result<(), WarehouseError>;
    /// Rows lost since the last call.
    fn take_lost(&mut self) -> u64;
    /// Closes files at least `max_age` old, or all of them with `None`.
    fn close_files(
        &mut self,
        files: &Files,
        max_age: Option<Duration>,
    ) -> Result<(), WarehouseError>;
}

impl<R: Rows> TableOps for Table<R> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn publish(&mut self, files: &Files, tag: Option<&str>) -> Result<(), WarehouseError> {
        let mut first = None;
        let stats = &mut self.stats;
        self.staged.retain(|f| match files.publish(f, tag, stats) {
            Ok(()) => false,
            Err(e) => {
                first.get_or_insert(e);
                true
            }
        });
        first.map_or(Ok(()), Err)
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    fn flush(&mut self, files: &Files) -> Result<(), WarehouseError> {
        let mut first = None;
        for (part, &key) in self.parts.iter_mut().zip(&self.keys) {
            let n = part.rows.len();
            if n == 0 && part.pending.is_empty() {
                continue;
            }
            self.buffered -= n;
            let w = write_partition(self.name, &self.schema, part, key, files, &mut self.stats);
            // Nothing rolled, or a file staged, or a failure and the rows it lost.
            if let Some(closed) = w.transpose()
                && let Err(e) = keep_staged(&mut self.staged, &mut self.lost, closed)
            {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.close_excess(files) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    fn close_files(
        &mut self,
        files: &Files,
        max_age: Option<Duration>,
    ) -> Result<(), WarehouseError> {
        let mut first = None;
        for part in &mut self.parts {
            let due = part
                .file
                .as_ref()
                .is_some_and(|f| max_age.is_none_or(|age| f.opened.elapsed() >= age));
            if due && let Some(f) = part.file.take() {
                let closed = files.close(f, &mut self.stats);
                if let Err(e) = keep_staged(&mut self.staged, &mut self.lost, closed) {
                    first.get_or_insert(e);
                }
            }
        }
        // Forget idle partitions so a replay of months of history does not keep one
        // buffer per hour alive forever.
        if self
            .parts
            .iter()
            .any(|p| p.file.is_none() && p.rows.len() == 0 && p.pending.is_empty())
        {
            let mut i = 0;
            while i < self.parts.len() {
                let p = &self.parts[i];
                if p.file.is_none() && p.rows.len() == 0 && p.pending.is_empty() {
                    self.parts.swap_remove(i);
                    self.keys.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            self.index = self.keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
            self.last = None;
        }
        first.map_or(Ok(()), Err)
    }
}

/// Turns one partition's buffer into a batch, writes it (after any batches still pending)
/// to the partition's file, opening one if needed, and stages the file once it holds
/// `roll_rows`. Returns the staged file, if any. On error, returns how many rows were
/// lost with it: none when no file could be opened (the batches stay pending), the whole
/// file's when a write failed.
fn write_partition<R: Rows>(
    table: &'static str,
    schema: &SchemaRef,
    part: &mut Partition<R>,
    key: i64,
    files: &Files,
    stats: &mut TableStats,
) -> Result<Option<Staged>, (WarehouseError, u64)> {
    if part.rows.len() > 0 {
        // try_new inside checks every column against the asserted schema. The builders
        // are drained either way; a batch that cannot be built is a bug, not input.
        let batch = part.rows.finish(schema).map_err(|e| (e.into(), 0))?;
        part.pending.push(batch);
    }
    if part.file.is_none() {
        part.file = Some(files.open(table, schema, key).map_err(|e| (e, 0))?);
    }
    let Some(file) = part.file.as_mut() else {
        return Ok(None);
    };
    let mut pending = std::mem::take(&mut part.pending).into_iter();
    for batch in pending.by_ref() {
        let n = batch.num_rows() as u64;
        if let Err(e) = file.writer.write(&batch) {
            // The rest stay pending for the next file; this one and the file are gone.
            part.pending.extend(pending);
            let lost = n + part.file.take().map_or(0, |f| abandon(f, table));
            return Err((e.into(), lost));
        }
        file.rows += n;
        stats.rows_written += n;
    }
    if file.rows >= files.config.roll_rows as u64
        && let Some(f) = part.file.take()
    {
        return files.close(f, stats).map(Some);
    }
    Ok(None)
}

/// A table's column builders. `push` appends one input item and returns the rows added.
trait Rows: Default {
    type Item;
    fn push(&mut self, item: &Self::Item) -> usize;
    fn len(&self) -> usize;
    /// Drains the builders into a batch of `schema`.
    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError>;
}

fn ts_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone(UTC)
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_new(schema.clone(), columns)
}

/// u32 counters and ids as Hive/Spark `INT`; values past i32 cannot occur (NEWS2 ≤ 20,
/// band ids and versions are row numbers), so saturating is only a guard.
fn int32(v: Option<u32>) -> Option<i32> {
    v.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

/// One text column of the `vitals` table, gathered as its Arrow layout (offsets and
/// bytes) in plain vectors. Why not `StringBuilder`: the builders' per-row pushes are
/// generic functions of arrow-rs that the compiler inlined into this crate in one build
/// and called in the next (6 % more instructions in the archive thread for a change
/// elsewhere in the crate); a `Vec` push inlines every time.
struct TextColumn {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
}

impl TextColumn {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        TextColumn {
            offsets,
            bytes: Vec::with_capacity(bytes),
        }
    }

    #[inline]
    fn push(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        // Wraps past 2 GiB; `finish` refuses such a column before any offset is used.
        self.offsets.push(self.bytes.len() as i32);
    }

    fn finish(self) -> Result<StringArray, ArrowError> {
        if i32::try_from(self.bytes.len()).is_err() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "a batch's text column holds {} bytes, over the 2 GiB of its offsets",
                self.bytes.len()
            )));
        }
        // Checks the offsets and that the bytes are UTF-8 (they were `str`s): linear,
        // once per batch.
        StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from_vec(self.bytes),
            None,
        )
    }
}

struct VitalRows {
    patient_id: TextColumn,
    device_id: TextColumn,
    vital: TextColumn,
    value: Vec<f64>,
    unit: TextColumn,
    observed_at: Vec<i64>,
    ingested_at: Vec<i64>,
}

impl Default for VitalRows {
    fn default() -> Self {
        VitalRows::with_capacity(0, [0; 4])
    }
}

impl VitalRows {
    /// Columns with room for `rows` rows, and for `bytes` bytes of text in `patient_id`,
    /// `device_id`, `vital` and `unit`.
    fn with_capacity(rows: usize, bytes: [usize; 4]) -> Self {
        let text = |n| TextColumn::with_capacity(rows, n);
        VitalRows {
            patient_id: text(bytes[0]),
            device_id: text(bytes[1]),
            vital: text(bytes[2]),
            value: Vec::with_capacity(rows),
            unit: text(bytes[3]),
            observed_at: Vec::with_capacity(rows),
            ingested_at: Vec::with_capacity(rows),
        }
    }
}

impl Rows for VitalRows {
    type Item = Observation;

    #[inline]
    fn push(&mut self, o: &Observation) -> usize {
        let mut n = 0;
        for (vital, value) in o.vitals.iter() {
            self.patient_id.push(o.patient_id.as_str());
            self.device_id.push(o.device_id.as_str());
            self.vital.push(vital.name());
            self.value.push(value);
            self.unit.push(vital.unit());
            self.observed_at.push(o.observed_at.micros());
            self.ingested_at.push(o.ingested_at.micros());
            n += 1;
        }
        n
    }

    fn len(&self) -> usize {
        self.value.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        // The next batch is about as large: columns sized for it never regrow (growing
        // from empty copied each string column several times per batch). The sizes of all
        // partitions together are one table batch, so idle partitions hold little.
        let bytes =
            [&self.patient_id, &self.device_id, &self.vital, &self.unit].map(|c| c.bytes.len());
        let next = VitalRows::with_capacity(self.len(), bytes);
        let done = std::mem::replace(self, next);
        let time = |t: Vec<i64>| TimestampMicrosecondArray::from(t).with_timezone(UTC);
        batch(
            schema,
            vec![
                Arc::new(done.patient_id.finish()?),
                Arc::new(done.device_id.finish()?),
                Arc::new(done.vital.finish()?),
                Arc::new(Float64Array::from(done.value)),
                Arc::new(done.unit.finish()?),
                Arc::new(time(done.observed_at)),
                Arc::new(time(done.ingested_at)),
            ],
        )
    }
}

struct AlertRows {
    alert_id: StringBuilder,
    event: StringBuilder,
    state: StringBuilder,
    rule: StringBuilder,
    rule_key: StringBuilder,
    priority: StringBuilder,
    patient_id: StringBuilder,
    vital: StringBuilder,
    value: Float64Builder,
    news2_score: Int32Builder,
    ref_id: Int32Builder,
    ref_version: Int32Builder,
    alert_message: StringBuilder,
    device_id: StringBuilder,
    input_message_time: TimestampMicrosecondBuilder,
    alert_generated_time: TimestampMicrosecondBuilder,
    episode_start: TimestampMicrosecondBuilder,
}

impl Default for AlertRows {
    fn default() -> Self {
        AlertRows {
            alert_id: StringBuilder::new(),
            event: StringBuilder::new(),
            state: StringBuilder::new(),
            rule: StringBuilder::new(),
            rule_key: StringBuilder::new(),
            priority: StringBuilder::new(),
            patient_id: StringBuilder::new(),
            vital: StringBuilder::new(),
            value: Float64Builder::new(),
            news2_score: Int32Builder::new(),
            ref_id: Int32Builder::new(),
            ref_version: Int32Builder::new(),
            alert_message: StringBuilder::new(),
            device_id: StringBuilder::new(),
            input_message_time: ts_builder(),
            alert_generated_time: ts_builder(),
            episode_start: ts_builder(),
        }
    }
}

impl Rows for AlertRows {
    type Item = AlertEvent;

    fn push(&mut self, e: &AlertEvent) -> usize {
        // e.patient (name, address, phone, ward) is deliberately not stored.
        self.alert_id.append_value(&e.alert_id);
        self.event.append_value(e.event.as_str());
        self.state.append_value(e.state.as_str());
        self.rule.append_value(&e.rule);
        self.rule_key.append_value(&e.rule_key);
        self.priority.append_value(e.priority.as_str());
        self.patient_id.append_value(e.patient_id.as_str());
        self.vital.append_option(e.vital.map(|v| v.name()));
        self.value.append_option(e.value);
        self.news2_score.append_option(int32(e.news2_score));
        self.ref_id.append_option(int32(e.ref_id));
        self.ref_version.append_option(int32(e.ref_version));
        self.alert_message.append_value(&e.alert_message);
        self.device_id.append_option(e.device_id.as_deref());
        self.input_message_time
            .append_value(e.input_message_time.micros());
        self.alert_generated_time
            .append_value(e.alert_generated_time.micros());
        self.episode_start.append_value(e.episode_start.micros());
        1
    }

    fn len(&self) -> usize {
        self.alert_id.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        batch(
            schema,
            vec![
                Arc::new(self.alert_id.finish()),
                Arc::new(self.event.finish()),
                Arc::new(self.state.finish()),
                Arc::new(self.rule.finish()),
                Arc::new(self.rule_key.finish()),
                Arc::new(self.priority.finish()),
                Arc::new(self.patient_id.finish()),
                Arc::new(self.vital.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.news2_score.finish()),
                Arc::new(self.ref_id.finish()),
                Arc::new(self.ref_version.finish()),
                Arc::new(self.alert_message.finish()),
                Arc::new(self.device_id.finish()),
                Arc::new(self.input_message_time.finish()),
                Arc::new(self.alert_generated_time.finish()),
                Arc::new(self.episode_start.finish()),
            ],
        )
    }
}

struct DeadLetterRows {
    received_at: TimestampMicrosecondBuilder,
    source: StringBuilder,
    reason: StringBuilder,
    payload: StringBuilder,
}

impl Default for DeadLetterRows {
    fn default() -> Self {
        DeadLetterRows {
            received_at: ts_builder(),
            source: StringBuilder::new(),
            reason: StringBuilder::new(),
            payload: StringBuilder::new(),
        }
    }
}

impl Rows for DeadLetterRows {
    type Item = DeadLetter;

    fn push(&mut self, d: &DeadLetter) -> usize {
        self.received_at.append_value(d.received_at.micros());
        self.source.append_value(&d.source);
        self.reason.append_value(&d.reason);
        self.payload.append_value(&d.payload);
        1
    }

    fn len(&self) -> usize {
        self.received_at.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        batch(
            schema,
            vec![
                Arc::new(self.received_at.finish()),
                Arc::new(self.source.finish()),
                Arc::new(self.reason.finish()),
                Arc::new(self.payload.finish()),
            ],
        )
    }
}

struct UnclassifiedRows {
    patient_id: StringBuilder,
    device_id: StringBuilder,
    vital: StringBuilder,
    value: Float64Builder,
    observed_at: TimestampMicrosecondBuilder,
    reason: StringBuilder,
}

impl Default for UnclassifiedRows {
    fn default() -> Self {
        UnclassifiedRows {
            patient_id: StringBuilder::new(),
            device_id: StringBuilder::new(),
            vital: StringBuilder::new(),
            value: Float64Builder::new(),
            observed_at: ts_builder(),
            reason: StringBuilder::new(),
        }
    }
}

impl Rows for UnclassifiedRows {
    type Item = Unclassified;

    fn push(&mut self, u: &Unclassified) -> usize {
        self.patient_id.append_value(u.patient_id.as_str());
        self.device_id.append_value(u.device_id.as_str());
        self.vital.append_option(u.vital.map(|v| v.name()));
        self.value.append_option(u.value);
        self.observed_at.append_value(u.observed_at.micros());
        self.reason.append_value(u.reason.as_str());
        1
    }

    fn len(&self) -> usize {
        self.patient_id.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        batch(
            schema,
            vec![
                Arc::new(self.patient_id.finish()),
                Arc::new(self.device_id.finish()),
                Arc::new(self.vital.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.observed_at.finish()),
                Arc::new(self.reason.finish()),
            ],
        )
    }
}

#[derive(Default)]
struct AuditRows {
    id: Int64Builder,
    at: TimestampMicrosecondBuilder,
    actor: StringBuilder,
    action: StringBuilder,
    subject: StringBuilder,
    detail: StringBuilder,
}

impl Rows for AuditRows {
    type Item = (u64, AuditEntry);

    fn push(&mut self, (id, a): &(u64, AuditEntry)) -> usize {
        self.id.append_value(i64::try_from(*id).unwrap_or(i64::MAX));
        self.at.append_value(a.at.micros());
        self.actor.append_value(&a.actor);
        self.action.append_value(&a.action);
        self.subject.append_value(&a.subject);
        self.detail.append_value(&a.detail);
        1
    }

    fn len(&self) -> usize {
        self.id.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        // `Default` made the timestamp builder without its zone; the schema has it.
        let at = self.at.finish().with_timezone(UTC);
        batch(
            schema,
            vec![
                Arc::new(self.id.finish()),
                Arc::new(at),
                Arc::new(self.actor.finish()),
                Arc::new(self.action.finish()),
                Arc::new(self.subject.finish()),
                Arc::new(self.detail.finish()),
            ],
        )
    }
}

#[derive(Default)]
struct ScoreRows {
    patient_id: StringBuilder,
    observed_at: TimestampMicrosecondBuilder,
    total: Int32Builder,
    response: StringBuilder,
    /// One builder per parameter, in `News2Score::parts` order.
    parts: [Int32Builder; 7],
    scale: Int32Builder,
    assumed_air: BooleanBuilder,
}

impl Rows for ScoreRows {
    type Item = ScoreRecord;

    fn push(&mut self, r: &ScoreRecord) -> usize {
        self.patient_id.append_value(r.patient_id.as_str());
        self.observed_at.append_value(r.observed_at.micros());
        self.total
            .append_value(i32::try_from(r.score.total).unwrap_or(i32::MAX));
        self.response.append_value(r.score.response.as_str());
        for (b, p) in self.parts.iter_mut().zip(r.score.parts) {
            b.append_value(i32::from(p));
        }
        self.scale.append_value(i32::from(r.scale.number()));
        self.assumed_air.append_value(r.assumed_air);
        1
    }

    fn len(&self) -> usize {
        self.patient_id.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        // `Default` made the timestamp builder without its zone; the schema has it.
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.patient_id.finish()),
            Arc::new(self.observed_at.finish().with_timezone(UTC)),
            Arc::new(self.total.finish()),
            Arc::new(self.response.finish()),
        ];
        columns.extend(
            self.parts
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.scale.finish()));
        columns.push(Arc::new(self.assumed_air.finish()));
        batch(schema, columns)
    }
}

#[derive(Default)]
struct PatientRows {
    snapshot_at: TimestampMicrosecondBuilder,
    source: StringBuilder,
    patient_id: StringBuilder,
    ward: StringBuilder,
    age: Int32Builder,
    scale: Int32Builder,
}

impl Rows for PatientRows {
    type Item = (Timestamp, Arc<str>, Patient);

    fn push(&mut self, (at, source, p): &(Timestamp, Arc<str>, Patient)) -> usize {
        self.snapshot_at.append_value(at.micros());
        self.source.append_value(source);
        self.patient_id.append_value(p.patient_id.as_str());
        self.ward.append_value(&p.ward);
        self.age
            .append_value(i32::try_from(p.age).unwrap_or(i32::MAX));
        self.scale.append_value(i32::from(p.spo2_scale.number()));
        1
    }

    fn len(&self) -> usize {
        self.patient_id.len()
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        batch(
            schema,
            vec![
                Arc::new(self.snapshot_at.finish().with_timezone(UTC)),
                Arc::new(self.source.finish()),
                Arc::new(self.patient_id.finish()),
                Arc::new(self.ward.finish()),
                Arc::new(self.age.finish()),
                Arc::new(self.scale.finish()),
            ],
        )
    }
}
