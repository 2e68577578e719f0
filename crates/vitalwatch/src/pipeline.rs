//! Pipeline wiring: sources → engine → (alert outputs | warehouse), on three threads.
//!
//! ```text
//! sources ──ingest──► engine thread ──alerts──► alert thread (catalog, alerts.jsonl, console)
//!    │                     │                         │
//!    └──dead letters──┐    └──readings, unclassified─┤
//!                     ▼                              ▼
//!                  archive thread (Parquet warehouse) ◄──alert events
//! ```
//!
//! Each arrow is a bounded channel. The alert path and the archive path are separate, so
//! a slow disk never delays an alarm; when a channel is full its sender waits (sources
//! are held back), nothing is dropped. Shutdown is a drain: sources drop their handles,
//! each thread finishes its queue and ends when its inputs close, in data-flow order.

use std::fs::OpenOptions;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, anyhow};
use vitalwatch_connectors::catalog::SqliteCatalog;
use vitalwatch_connectors::warehouse::{ParquetSink, WarehouseConfig, WarehouseStats};
use vitalwatch_core::alert::{AlertEvent, AlertEventKind, Priority};
use vitalwatch_core::clock::{Reference, StreamClock, TimeConfig, TimeError};
use vitalwatch_core::codec::encode_canonical;
use vitalwatch_core::engine::{AckError, Engine, Findings, Processed};
use vitalwatch_core::model::{DeadLetter, Duration, Observation, Timestamp, Unclassified};
use vitalwatch_core::rules::Profile;

use crate::config::Config;
use crate::metrics::Metrics;

/// The wall clock, as the core's timestamp type.
pub fn wall_now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// Which clock drives time-based rules (stale devices, re-notification, eviction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The wall clock: live runs.
    Wall,
    /// The recording's own clock ([`StreamClock`]): replays, so a replayed hour behaves
    /// like an hour.
    Stream,
}

/// Gives a record that carries no time of its own (a classic record without
/// `message_time`, decoded with `batch_now` standing in for it) its own ingest time from
/// `next`, so two such records are two readings. Records with a time keep the batch's
/// ingest time, which the warehouse stores in a few bytes per batch.
pub fn stamp_untimed(o: &mut Observation, batch_now: Timestamp, next: impl FnOnce() -> Timestamp) {
    if o.observed_at == batch_now && o.ingested_at == batch_now {
        let t = next();
        o.observed_at = t;
        o.ingested_at = t;
    }
}

/// Hands out ingest times: the wall clock, but strictly increasing, so two records that
/// carry no time of their own (classic records without `message_time`) never share one,
/// and stay two readings.
#[derive(Debug, Default)]
pub struct IngestStamps(AtomicI64);

impl IngestStamps {
    /// The next ingest time at wall time `wall`.
    pub fn next(&self, wall: Timestamp) -> Timestamp {
        let prev = self
            .0
            .fetch_update(Relaxed, Relaxed, |last| Some(wall.0.max(last + 1)))
            .unwrap_or(wall.0);
        Timestamp(wall.0.max(prev + 1))
    }
}

/// A message to the engine thread.
#[derive(Debug)]
pub enum IngestMsg {
    /// Observations to evaluate.
    Batch(Vec<Observation>),
    /// Acknowledge an alert; the result comes back on `reply`.
    Ack {
        /// Alert id.
        alert_id: String,
        /// Who acknowledges.
        by: String,
        /// Where the result goes.
        reply: flume::Sender<Result<AlertEvent, AckError>>,
    },
}

/// A message to the archive thread.
#[derive(Debug)]
pub enum ArchiveMsg {
    /// Accepted observations (one row per vital).
    Observations(Vec<Observation>),
    /// Alert events, after the alert outputs took them.
    Alerts(Vec<AlertEvent>),
    /// Records that failed decoding or validation.
    DeadLetters(Vec<DeadLetter>),
    /// Readings that could not be classified.
    Unclassified(Vec<Unclassified>),
}

/// What a source needs to feed the pipeline. Cheap to clone; the pipeline drains when
/// every clone is dropped.
#[derive(Debug, Clone)]
pub struct PipelineHandle {
    /// Observations and acknowledgements to the engine.
    pub ingest: flume::Sender<IngestMsg>,
    /// Dead letters straight to the warehouse.
    pub archive: flume::Sender<ArchiveMsg>,
    /// Shared counters.
    pub metrics: Arc<Metrics>,
    /// Catalog file, for read-only API requests.
    pub catalog_path: PathBuf,
    /// Event-time limits live sources apply to what they decode.
    pub time: TimeConfig,
    /// Ingest times for live sources.
    pub stamps: Arc<IngestStamps>,
}

impl PipelineHandle {
    /// Admits a live reading: its observation time against its ingest time.
    pub fn admit_live(&self, o: &Observation) -> Result<(), TimeError> {
        self.time
            .admit(o.observed_at, o.ingested_at, Reference::IngestTime)
    }

    /// Counts and logs dead letters; `None` when there are none.
    fn dead_letter_msg(&self, dls: Vec<DeadLetter>) -> Option<ArchiveMsg> {
        if dls.is_empty() {
            return None;
        }
        self.metrics
            .dead_letters
            .fetch_add(dls.len() as u64, Relaxed);
        for d in &dls {
            tracing::debug!(source = %d.source, reason = %d.reason, "dead letter");
        }
        Some(ArchiveMsg::DeadLetters(dls))
    }

    /// Records dead letters (counted, then archived), from a thread that may block.
    pub fn dead_letters(&self, dls: Vec<DeadLetter>) {
        if let Some(m) = self.dead_letter_msg(dls) {
            let _ = self.archive.send(m);
        }
    }

    /// Records dead letters from async code: waits for queue space without blocking the
    /// runtime's worker thread.
    pub async fn dead_letters_async(&self, dls: Vec<DeadLetter>) {
        if let Some(m) = self.dead_letter_msg(dls) {
            let _ = self.archive.send_async(m).await;
        }
    }
}

/// Options beyond the config file.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Which clock drives time-based rules.
    pub clock: Clock,
    /// Print alerts on the console (overrides the config when false).
    pub console: bool,
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    handle: Option<PipelineHandle>,
    engine: JoinHandle<anyhow::Result<()>>,
    alerts: JoinHandle<anyhow::Result<()>>,
    archive: JoinHandle<anyhow::Result<WarehouseStats>>,
    started: Instant,
}

/// The end-of-run summary.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Observation sets accepted.
    pub observations: u64,
    /// Readings accepted.
    pub readings: u64,
    /// Alerts triggered.
    pub alerts: u64,
    /// Alert events of all kinds.
    pub alert_events: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Unclassified readings.
    pub unclassified: u64,
    /// Warehouse counters.
    pub warehouse: WarehouseStats,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "readings: {} ({} observation sets) in {:.2}s = {:.0} readings/s",
            self.readings,
            self.observations,
            secs,
            self.readings as f64 / secs
        )?;
        writeln!(
            f,
            "alerts: {} triggered, {} events",
            self.alerts, self.alert_events
        )?;
        writeln!(f, "dead letters: {}", self.dead_letters)?;
        writeln!(f, "unclassified: {}", self.unclassified)?;
        write!(
            f,
            "warehouse: {} vitals rows, {} alert rows, {} dead-letter rows, {} unclassified rows in {} files",
            self.warehouse.vitals.rows_committed,
            self.warehouse.alerts.rows_committed,
            self.warehouse.dead_letters.rows_committed,
            self.warehouse.unclassified.rows_committed,
            self.warehouse.files_closed()
        )
    }
}

/// Paths inside the data directory.
pub fn catalog_path(data: &Path) -> PathBuf {
    data.join("catalog.sqlite")
}

/// Root of the Parquet warehouse inside the data directory.
pub fn warehouse_root(data: &Path) -> PathBuf {
    data.join("warehouse")
}

impl Pipeline {
    /// Loads reference data from the catalog and starts the three threads.
    pub fn start(
        config: &Config,
        opts: PipelineOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Pipeline> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create data directory {}", data.display()))?;
        let cat_path = catalog_path(data);
        let catalog = SqliteCatalog::open(&cat_path)
            .with_context(|| format!("cannot open catalog {}", cat_path.display()))?;
        let patients = catalog.patients().context("cannot load patients")?;
        let table = catalog.thresholds().context("cannot load thresholds")?;
        tracing::info!(
            patients = patients.len(),
            bands = table.bands.len(),
            version = table.version,
            profile = config.rules.profile.as_str(),
            "reference data loaded"
        );
        let mut engine =
            Engine::new(config.rules.clone(), patients, table).with_lateness(config.time.lateness);
        // The alerts still open when the last run stopped (or crashed) carry on. (The
        // classic profile keeps no alert open: nothing to take back, nothing to read.)
        if config.rules.profile == Profile::Standard {
            let open = catalog
                .open_alerts_to_restore()
                .context("cannot load open alerts")?;
            let restored = engine.restore(open);
            if restored > 0 {
                tracing::info!(restored, "open alerts restored from the catalog");
            }
        }

        let (ingest_tx, ingest_rx) = flume::bounded(config.pipeline.ingest_capacity);
        let (archive_tx, archive_rx) = flume::bounded(config.pipeline.archive_capacity);
        let (alert_tx, alert_rx) = flume::bounded(config.pipeline.alert_capacity);

        let wh = WarehouseConfig {
            root: warehouse_root(data),
            batch_rows: config.warehouse.batch_rows,
            roll_rows: config.warehouse.roll_rows,
            roll_interval: config.warehouse.roll_interval.to_std(),
            zstd_level: config.warehouse.zstd_level,
        };
        let sink = ParquetSink::new(wh).context("cannot open the warehouse")?;
        let archive = {
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("archive".into())
                .spawn(move || archive_loop(sink, archive_rx, &metrics))?
        };
        let alerts = {
            let outputs = AlertOutputs::open(config, opts.console, catalog)?;
            let metrics = metrics.clone();
            let archive_tx = archive_tx.clone();
            std::thread::Builder::new()
                .name("alerts".into())
                .spawn(move || alert_loop(outputs, alert_rx, archive_tx, &metrics))?
        };
        let engine = {
            let metrics = metrics.clone();
            let archive_tx = archive_tx.clone();
            let clock = match opts.clock {
                Clock::Wall => EngineClock::Wall,
                // A step of the stream larger than the lateness window needs a second
                // reading to confirm it, so one fast device clock cannot drag re-notify,
                // stale-device and eviction times ahead.
                Clock::Stream => EngineClock::Stream(StreamClock::new(config.time.lateness)),
            };
            std::thread::Builder::new()
                .name("engine".into())
                .spawn(move || {
                    engine_loop(engine, clock, ingest_rx, alert_tx, archive_tx, &metrics)
                })?
        };
        Ok(Pipeline {
            handle: Some(PipelineHandle {
                ingest: ingest_tx,
                archive: archive_tx,
                metrics,
                catalog_path: cat_path,
                time: config.time.clone(),
                stamps: Arc::new(IngestStamps::default()),
            }),
            engine,
            alerts,
            archive,
            started: Instant::now(),
        })
    }

    /// A handle for a source.
    pub fn handle(&self) -> PipelineHandle {
        self.handle.clone().expect("pipeline running")
    }

    /// Drains and stops: call after every source has dropped its handles.
    pub fn shutdown(mut self) -> anyhow::Result<Summary> {
        let metrics = self
            .handle
            .as_ref()
            .map(|h| h.metrics.clone())
            .expect("pipeline running");
        self.handle = None;
        let join = |name: &str, r: std::thread::Result<anyhow::Result<()>>| -> anyhow::Result<()> {
            r.map_err(|_| anyhow!("{name} thread panicked"))?
        };
        join("engine", self.engine.join())?;
        join("alert", self.alerts.join())?;
        let warehouse = self
            .archive
            .join()
            .map_err(|_| anyhow!("archive thread panicked"))??;
        Ok(Summary {
            observations: metrics.observations.load(Relaxed),
            readings: metrics.readings.load(Relaxed),
            alerts: metrics.alerts_total(),
            alert_events: metrics.alert_events.load(Relaxed),
            dead_letters: metrics.dead_letters.load(Relaxed),
            unclassified: metrics.unclassified.load(Relaxed),
            warehouse,
            elapsed: self.started.elapsed(),
        })
    }
}

/// Most alert events per message on the alert channel.
const ALERT_CHUNK: usize = 256;

/// The clock the engine thread injects.
enum EngineClock {
    Wall,
    Stream(StreamClock),
}

/// Ticks come once a second of the injected clock.
const TICK: Duration = Duration::from_secs(1);

fn engine_loop(
    mut engine: Engine,
    mut clock: EngineClock,
    rx: flume::Receiver<IngestMsg>,
    alert_tx: flume::Sender<Vec<AlertEvent>>,
    archive_tx: flume::Sender<ArchiveMsg>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut findings = Findings::default();
    let mut last_tick = Timestamp(i64::MIN);
    // The stream clock's time, for acknowledgements during a replay.
    let mut stream_now = Timestamp(i64::MIN);
    let emit = |findings: &mut Findings| {
        // Chunks bound the alert queue by events, not batches: a classic-profile replay
        // turns one batch into thousands of alerts.
        while !findings.events.is_empty() {
            let n = findings.events.len().min(ALERT_CHUNK);
            let _ = alert_tx.send(findings.events.drain(..n).collect());
        }
        if !findings.unclassified.is_empty() {
            metrics
                .unclassified
                .fetch_add(findings.unclassified.len() as u64, Relaxed);
            let _ = archive_tx.send(ArchiveMsg::Unclassified(std::mem::take(
                &mut findings.unclassified,
            )));
        }
    };
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(IngestMsg::Batch(mut batch)) => {
                let wall = wall_now();
                let mut readings = 0u64;
                let mut rejected: Vec<(usize, String)> = Vec::new();
                for (i, o) in batch.iter().enumerate() {
                    let now = match &mut clock {
                        EngineClock::Wall => wall,
                        EngineClock::Stream(c) => {
                            c.offer(o.observed_at);
                            stream_now = stream_now.max(c.now().unwrap_or(o.observed_at));
                            stream_now
                        }
                    };
                    match engine.process(o, now, &mut findings) {
                        Processed::Evaluated => {}
                        Processed::Late => {
                            metrics
                                .late_readings
                                .fetch_add(o.vitals.len() as u64, Relaxed);
                        }
                        Processed::Rejected(why) => rejected.push((i, why)),
                    }
                    readings += o.vitals.len() as u64;
                    // Time-driven rules follow the clock, not batch boundaries.
                    if matches!(clock, EngineClock::Stream(_)) && now.since(last_tick) >= TICK {
                        engine.tick(now, &mut findings);
                        last_tick = now;
                    }
                }
                if !rejected.is_empty() {
                    readings -= reject(&mut batch, rejected, &archive_tx, metrics);
                }
                metrics.observations.fetch_add(batch.len() as u64, Relaxed);
                metrics.readings.fetch_add(readings, Relaxed);
                // Alerts first: the archive channel may make us wait, the alarm must not.
                emit(&mut findings);
                let _ = archive_tx.send(ArchiveMsg::Observations(batch));
            }
            Ok(IngestMsg::Ack {
                alert_id,
                by,
                reply,
            }) => {
                let now = match clock {
                    EngineClock::Wall => wall_now(),
                    EngineClock::Stream(_) => stream_now,
                };
                let r = engine.acknowledge(&alert_id, &by, now);
                if let Ok(ev) = &r {
                    findings.events.push(ev.clone());
                    emit(&mut findings);
                }
                let _ = reply.send(r);
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        if matches!(clock, EngineClock::Wall) {
            let now = wall_now();
            if now.since(last_tick) >= TICK {
                engine.tick(now, &mut findings);
                emit(&mut findings);
                last_tick = now;
            }
        }
    }
    Ok(())
}

/// Turns the observations the engine refused (a state bound was reached) into dead
/// letters, out of the batch. Returns how many readings they held.
fn reject(
    batch: &mut Vec<Observation>,
    rejected: Vec<(usize, String)>,
    archive_tx: &flume::Sender<ArchiveMsg>,
    metrics: &Metrics,
) -> u64 {
    let mut readings = 0;
    let mut dead = Vec::with_capacity(rejected.len());
    let mut payload = String::new();
    for (i, why) in rejected.iter().rev() {
        let o = batch.remove(*i);
        readings += o.vitals.len() as u64;
        payload.clear();
        encode_canonical(&o, None, &mut payload);
        dead.push(DeadLetter::new(
            o.ingested_at,
            "engine".into(),
            why.clone(),
            payload.as_bytes(),
        ));
    }
    metrics.dead_letters.fetch_add(dead.len() as u64, Relaxed);
    tracing::warn!(count = dead.len(), reason = %rejected[0].1, "observations refused by the engine");
    let _ = archive_tx.send(ArchiveMsg::DeadLetters(dead));
    readings
}

/// Where alerts go: the catalog (durable, idempotent), the alert log, the console.
struct AlertOutputs {
    catalog: SqliteCatalog,
    jsonl: Option<BufWriter<std::fs::File>>,
    console: Option<ConsolePrinter>,
    /// Dropped with the outputs: tells the checkpointer to do a last pass and stop.
    _checkpointer: flume::Sender<()>,
}

/// Checkpoints the catalog's WAL from its own connection once a second, off the alert
/// path (see [`SqliteCatalog::disable_autocheckpoint`]).
fn spawn_checkpointer(path: PathBuf) -> anyhow::Result<flume::Sender<()>> {
    let (tx, rx) = flume::bounded::<()>(1);
    let cat = SqliteCatalog::open(&path)
        .with_context(|| format!("cannot open catalog {}", path.display()))?;
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            loop {
                let stop = matches!(
                    rx.recv_timeout(std::time::Duration::from_secs(1)),
                    Err(flume::RecvTimeoutError::Disconnected)
                );
                if let Err(e) = cat.checkpoint() {
                    tracing::warn!(error = %e, "catalog checkpoint failed");
                }
                if stop {
                    break;
                }
            }
        })?;
    Ok(tx)
}

impl AlertOutputs {
    fn open(config: &Config, console: bool, catalog: SqliteCatalog) -> anyhow::Result<Self> {
        catalog.disable_autocheckpoint()?;
        let checkpointer = spawn_checkpointer(catalog_path(&config.data_dir))?;
        let jsonl = if config.alerts.jsonl {
            let path = config.data_dir.join("alerts.jsonl");
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open alert log {}", path.display()))?;
            Some(BufWriter::new(f))
        } else {
            None
        };
        let console = (console && config.alerts.console).then(|| ConsolePrinter {
            colour: crate::commands::colour_on(std::io::stdout().is_terminal()),
            names: config.alerts.console_names,
        });
        Ok(AlertOutputs {
            catalog,
            jsonl,
            console,
            _checkpointer: checkpointer,
        })
    }
}

fn alert_loop(
    mut out: AlertOutputs,
    rx: flume::Receiver<Vec<AlertEvent>>,
    archive_tx: flume::Sender<ArchiveMsg>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut line = String::with_capacity(512);
    while let Ok(mut events) = rx.recv() {
        // Take whatever else is queued: one catalog transaction per burst.
        while let Ok(more) = rx.try_recv() {
            events.extend(more);
            if events.len() >= 4096 {
                break;
            }
        }
        // Encoded once, for both the catalog and the alert log. Serializing an AlertEvent
        // cannot fail: it has only strings, numbers and timestamps.
        let json: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).expect("alert events serialize"))
            .collect();
        let pairs = events.iter().zip(json.iter().map(String::as_str));
        let fresh = match out.catalog.record_alert_events(pairs) {
            Ok(f) => f,
            Err(e) => {
                // The catalog is the dedup record; if it fails, deliver anyway: a duplicate
                // alarm is better than a lost one.
                metrics.alert_output_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "cannot record alerts in the catalog");
                vec![true; events.len()]
            }
        };
        let mut delivered = Vec::with_capacity(events.len());
        let mut lock = stdout.lock();
        for ((e, body), new) in events.into_iter().zip(&json).zip(fresh) {
            if !new {
                metrics.alert_events_replayed.fetch_add(1, Relaxed);
                continue;
            }
            if let Some(w) = out.jsonl.as_mut() {
                let r = w
                    .write_all(body.as_bytes())
                    .and_then(|_| w.write_all(b"\n"));
                if let Err(err) = r {
                    metrics.alert_output_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %err, "cannot append to alerts.jsonl");
                }
            }
            if let Some(c) = &out.console {
                line.clear();
                c.format(&e, &mut line);
                let _ = lock.write_all(line.as_bytes());
            }
            delivered.push(e);
        }
        if let Some(w) = out.jsonl.as_mut()
            && let Err(err) = w.flush()
        {
            metrics.alert_output_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %err, "cannot flush alerts.jsonl");
        }
        let _ = lock.flush();
        drop(lock);
        let now = wall_now();
        for e in &delivered {
            metrics.alert_events.fetch_add(1, Relaxed);
            if e.event == AlertEventKind::Triggered {
                metrics.alert_triggered(e.priority);
                metrics.observe_latency(now.since(e.input_message_time).micros());
            }
        }
        if !delivered.is_empty() {
            let _ = archive_tx.send(ArchiveMsg::Alerts(delivered));
        }
    }
    Ok(())
}

fn archive_loop(
    mut sink: ParquetSink,
    rx: flume::Receiver<ArchiveMsg>,
    metrics: &Metrics,
) -> anyhow::Result<WarehouseStats> {
    let mut last_tick = Instant::now();
    loop {
        let msg = rx.recv_timeout(std::time::Duration::from_millis(500));
        let r = match msg {
            Ok(ArchiveMsg::Observations(o)) => {
                metrics
                    .archived_rows
                    .fetch_add(o.iter().map(|x| x.vitals.len() as u64).sum(), Relaxed);
                sink.write_observations(&o)
            }
            Ok(ArchiveMsg::Alerts(a)) => {
                metrics.archived_rows.fetch_add(a.len() as u64, Relaxed);
                sink.write_alert_events(&a)
            }
            Ok(ArchiveMsg::DeadLetters(d)) => {
                metrics.archived_rows.fetch_add(d.len() as u64, Relaxed);
                sink.write_dead_letters(&d)
            }
            Ok(ArchiveMsg::Unclassified(u)) => {
                metrics.archived_rows.fetch_add(u.len() as u64, Relaxed);
                sink.write_unclassified(&u)
            }
            Err(flume::RecvTimeoutError::Timeout) => Ok(()),
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(e) = r {
            metrics.archive_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "warehouse write failed");
        }
        if last_tick.elapsed() >= std::time::Duration::from_secs(1) {
            if let Err(e) = sink.tick() {
                metrics.archive_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "warehouse roll failed");
            }
            last_tick = Instant::now();
        }
    }
    sink.close().context("cannot close warehouse files")
}

/// One readable line per alert event, coloured by priority on a terminal.
#[derive(Debug)]
struct ConsolePrinter {
    colour: bool,
    names: bool,
}

impl ConsolePrinter {
    fn format(&self, e: &AlertEvent, out: &mut String) {
        use std::fmt::Write as _;
        // IEC 60601-1-8 colours: high red, medium yellow, low cyan.
        let (on, off) = match (self.colour, e.priority) {
            (false, _) => ("", ""),
            (true, Priority::High) => ("\x1b[1;31m", "\x1b[0m"),
            (true, Priority::Medium) => ("\x1b[33m", "\x1b[0m"),
            (true, Priority::Low) => ("\x1b[36m", "\x1b[0m"),
        };
        let who = if self.names && !e.patient.patientname.is_empty() {
            format!("{} ({})", e.patient.patientname, e.patient_id)
        } else {
            format!("patient {}", e.patient_id)
        };
        let ward = if e.patient.admitted_ward.is_empty() {
            String::new()
        } else {
            format!(" ward {}", e.patient.admitted_ward)
        };
        let what = match (e.vital, e.value) {
            (Some(v), Some(x)) => format!(" {v}={x}"),
            (None, Some(x)) if e.rule == "news2" => format!(" score={x}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{on}{} {:<6} {:<12} {}{} [{}{}] {}  (alert {}){off}",
            e.input_message_time.to_datetime().format("%H:%M:%S%.3f"),
            e.priority.as_str().to_uppercase(),
            e.event.as_str(),
            who,
            ward,
            e.rule_key,
            what,
            e.alert_message,
            e.alert_id
        );
    }
}
