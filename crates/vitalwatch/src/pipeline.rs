//! Pipeline wiring: sources → engine → (alert store → notifiers | warehouse).
//!
//! ```text
//!            control (acks) ─┐
//! sources ──ingest (data, dead letters, checkpoints)──► engine thread
//!                                                      │            │
//!                     alert events, checkpoints ◄──────┘            └──► readings, dead letters,
//!                              │                                        unclassified, checkpoints
//!                              ▼                                                 │
//!  alert thread: alert store + outbox, one transaction per burst                  ▼
//!                              │                           archive thread (Parquet warehouse)
//!          outbox ─► notifier threads: warehouse `alerts`, alerts.jsonl, console
//! ```
//!
//! Each arrow is a bounded channel. The alert path and the archive path are separate, so
//! a slow disk never delays an alarm; when a channel is full its sender waits (sources
//! are held back), nothing is dropped. Notifiers read the outbox from their own cursor
//! and never hold up the alert path. A source's checkpoint travels behind its data and is
//! confirmed by both paths once what precedes it is durable
//! ([`vitalwatch_connectors::source::checkpoint`]).
//! Shutdown is a drain: sources drop their handles, each thread finishes its queue and
//! ends when its inputs close, in data-flow order; notifiers deliver the outbox to its end.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, anyhow};
use vitalwatch_connectors::catalog::SqliteCatalog;
use vitalwatch_connectors::notify::kafka::KafkaNotifier;
use vitalwatch_connectors::notify::{JsonlNotifier, Notifier, NotifyError, OutboxItem, SharedText};
use vitalwatch_connectors::postgres::PostgresStore;
use vitalwatch_connectors::store::{AlertStore, DeliveryAttempt, DeliveryOutcome, ReferenceStore};
use vitalwatch_connectors::warehouse::recovery::remove_unpublished;
use vitalwatch_connectors::warehouse::{
    AlertArchiver, AuditCopier, ParquetSink, WarehouseConfig, WarehouseStats,
};
use vitalwatch_core::alert::{AlertEvent, AlertEventKind, JsonFragments, Priority};
use vitalwatch_core::clock::StreamClock;
use vitalwatch_core::codec::encode_canonical;
use vitalwatch_core::engine::{Engine, Findings, Processed, ScoreRecord};
use vitalwatch_core::model::{DeadLetter, Duration, Observation, Timestamp, Unclassified};
use vitalwatch_core::rules::Profile;

use crate::config::{Config, NotifierConfig};
use crate::metrics::Metrics;
use vitalwatch_connectors::source::Checkpoint;
use vitalwatch_connectors::source::checkpoint::Path as CheckpointPath;
pub use vitalwatch_connectors::source::{
    Control, IngestMsg, IngestStamps, SourceHandle, stamp_untimed, wall_now,
};

/// Which clock drives time-based rules (stale devices, re-notification, eviction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The wall clock: live runs.
    Wall,
    /// The recording's own clock ([`StreamClock`]): replays, so a replayed hour behaves
    /// like an hour.
    Stream,
}

/// A message to the archive thread.
#[derive(Debug)]
pub enum ArchiveMsg {
    /// Accepted observations (one row per vital).
    Observations(Vec<Observation>),
    /// Records that failed decoding or validation.
    DeadLetters(Vec<DeadLetter>),
    /// Readings that could not be classified.
    Unclassified(Vec<Unclassified>),
    /// NEWS2 results.
    Scores(Vec<ScoreRecord>),
    /// Publish everything before this, then confirm.
    Checkpoint(Arc<Checkpoint>),
}

/// An alert event with its JSON text, made once on the engine thread.
type Texted = (AlertEvent, SharedText);

/// A message to the alert thread.
#[derive(Debug)]
enum AlertMsg {
    /// Events with their JSON text (serialized on the engine thread: the alert thread is
    /// the bottleneck of an alert flood).
    Events(Vec<Texted>),
    Checkpoint(Arc<Checkpoint>),
    /// Once everything before it is recorded: the store's open alerts (for a resync).
    OpenAlerts(flume::Sender<Result<Vec<AlertEvent>, String>>),
}

/// What the HTTP server and the sources of a running pipeline get: the source seam's
/// handle, the metrics and the catalog for read-only API requests. Cheap to clone; the
/// pipeline drains when every clone is dropped.
#[derive(Debug, Clone)]
pub struct PipelineHandle {
    /// What sources feed.
    pub source: SourceHandle,
    /// Shared counters.
    pub metrics: Arc<Metrics>,
    /// Where the catalog is, for read-only API requests.
    pub catalog: CatalogAt,
}

/// Options beyond the config file.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Which clock drives time-based rules.
    pub clock: Clock,
    /// Print alerts on the console (overrides the config when false).
    pub console: bool,
    /// Publish warehouse files only at checkpoints (a resumable source: what no committed
    /// checkpoint covers stays invisible and is re-read after a crash), not every
    /// `warehouse.roll_interval`.
    pub publish_at_checkpoints_only: bool,
    /// Look for changed reference data in the catalog this often and apply it while
    /// running (a threshold import from another replica, an update in the database).
    pub reference_refresh: Option<std::time::Duration>,
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    handle: Option<PipelineHandle>,
    engine: JoinHandle<anyhow::Result<()>>,
    alerts: JoinHandle<anyhow::Result<()>>,
    archive: JoinHandle<anyhow::Result<WarehouseStats>>,
    notifiers: Vec<(String, JoinHandle<anyhow::Result<u64>>)>,
    /// The reference watcher: dropping the sender stops it; joined at shutdown on SQLite,
    /// so its connection is closed before the process ends (SQLite removes the WAL when
    /// the last connection closes; an unjoined watcher left it behind).
    watch: Option<(flume::Sender<()>, JoinHandle<anyhow::Result<u64>>)>,
    /// The audit-trail copy into the warehouse: dropping the sender makes it copy a last
    /// time and stop.
    audit: (flume::Sender<()>, JoinHandle<anyhow::Result<u64>>),
    /// On object storage: the thread moving published files to the bucket.
    upload: Option<(flume::Sender<()>, JoinHandle<anyhow::Result<u64>>)>,
    /// Outbox leases of a shared catalog: released once the notifiers are done.
    leases: Option<crate::adopt::Leases>,
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
            "warehouse: {} vitals rows, {} alert rows, {} dead-letter rows, {} unclassified rows, {} score rows in {} files",
            self.warehouse.vitals.rows_committed,
            self.warehouse.alerts.rows_committed,
            self.warehouse.dead_letters.rows_committed,
            self.warehouse.unclassified.rows_committed,
            self.warehouse.scores.rows_committed,
            self.warehouse.files_closed()
        )
    }
}

/// Paths inside the data directory.
pub fn catalog_path(data: &Path) -> PathBuf {
    data.join("catalog.sqlite")
}

/// Both store seams in one backend: the catalog.
pub trait Store: ReferenceStore + AlertStore {}
impl<T: ReferenceStore + AlertStore> Store for T {}

/// Where the catalog lives: `catalog = ""` (SQLite in the data directory, the embedded
/// default) or `catalog = "postgres://…"` (shared by replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogAt {
    /// `<data_dir>/catalog.sqlite`.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas.
    Postgres {
        /// The connection URL (it may hold a password: never print it, use
        /// [`CatalogAt::describe`]).
        url: String,
        /// The data directory, whose [`replica_id`] names this replica's outbox.
        data_dir: PathBuf,
    },
}

impl CatalogAt {
    /// Where `cfg` puts the catalog.
    pub fn of(cfg: &Config) -> Self {
        if cfg.catalog.is_empty() {
            CatalogAt::Sqlite(catalog_path(&cfg.data_dir))
        } else {
            CatalogAt::Postgres {
                url: cfg.catalog.clone(),
                data_dir: cfg.data_dir.clone(),
            }
        }
    }

    /// Opens the catalog (creating its tables if needed).
    pub fn open(&self) -> anyhow::Result<Box<dyn Store>> {
        Ok(match self {
            CatalogAt::Sqlite(p) => Box::new(
                SqliteCatalog::open(p)
                    .with_context(|| format!("cannot open catalog {}", p.display()))?,
            ),
            CatalogAt::Postgres { url, data_dir } => Box::new(
                PostgresStore::connect(url)
                    .with_context(|| format!("cannot open catalog {}", self.describe()))?
                    .with_origin(&replica_id(data_dir, false)?),
            ),
        })
    }

    /// Opens the catalog for a writer inside a running pipeline (the alert path, a
    /// source committing its positions). SQLite: its commits leave the WAL to the
    /// pipeline's checkpointer thread ([`SqliteCatalog::disable_autocheckpoint`]); a
    /// source's commit otherwise copied the whole log into the database itself, stalling
    /// the reader behind it for the alert flood's pages.
    pub fn open_in_pipeline(&self) -> anyhow::Result<Box<dyn Store>> {
        match self {
            CatalogAt::Sqlite(p) => {
                let c = SqliteCatalog::open(p)
                    .with_context(|| format!("cannot open catalog {}", p.display()))?;
                c.disable_autocheckpoint()?;
                Ok(Box::new(c))
            }
            CatalogAt::Postgres { .. } => self.open(),
        }
    }

    /// For people: the SQLite path, or the PostgreSQL URL with its password masked.
    pub fn describe(&self) -> String {
        match self {
            CatalogAt::Sqlite(p) => p.display().to_string(),
            CatalogAt::Postgres { url, .. } => mask_password(url),
        }
    }
}

/// A connection URL with the password (`user:PASSWORD@`) replaced by `***`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A `[[notifiers]]` item's notifier.
pub fn external_notifier(n: &NotifierConfig) -> anyhow::Result<Box<dyn Notifier>> {
    Ok(match n {
        NotifierConfig::Kafka(k) => Box::new(
            KafkaNotifier::new(k.clone())
                .with_context(|| format!("cannot create notifier {}", k.name))?,
        ),
        NotifierConfig::Smtp(m) => Box::new(
            vitalwatch_connectors::notify::smtp::SmtpNotifier::new(m.clone())
                .with_context(|| format!("cannot create notifier {}", m.name))?,
        ),
        NotifierConfig::Webhook(w) => Box::new(
            vitalwatch_connectors::notify::webhook::WebhookNotifier::new(w.clone())
                .with_context(|| format!("cannot create notifier {}", w.name))?,
        ),
        NotifierConfig::Sns(a) => Box::new(
            vitalwatch_connectors::notify::sns::SnsNotifier::new(a.clone())
                .with_context(|| format!("cannot create notifier {}", a.name))?,
        ),
    })
}

/// One lane of a `[[notifiers]]` item's notifier, behind the `[[routes]]` and the silences
/// in `store`.
pub fn filtered_notifier(
    n: &NotifierConfig,
    lane: crate::routing::Lane,
    routes: &Arc<crate::routing::Routes>,
    store: Option<Box<dyn Store>>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Box<dyn Notifier>> {
    Ok(Box::new(crate::routing::Filtered::new(
        external_notifier(n)?,
        lane,
        routes.clone(),
        store,
        metrics.clone(),
    )))
}

/// The data directory's replica id: in a shared catalog it names this replica's outbox
/// (its notifiers deliver exactly the events it recorded) and its Kafka checkpoints.
/// Made once, at random, by the first `run` or `replay` (`create`), and kept in
/// `<data>/replica-id`; `""` before that.
pub fn replica_id(data: &Path, create: bool) -> anyhow::Result<String> {
    let path = data.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) => return Ok(id.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    // Unique enough without a random-number crate: where, who and when.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!(
        "r{:012x}",
        vitalwatch_core::alert::stable_hash(&[
            data.as_os_str().as_encoded_bytes(),
            &std::process::id().to_le_bytes(),
            &nanos.to_le_bytes(),
        ]) >> 16
    );
    // Written whole, then renamed: a crash never leaves half an id.
    let tmp = data.join(".replica-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The Kafka source of `settings` for a pipeline in `cfg`'s data directory, scoped to
/// its replica.
pub fn kafka_source(
    cfg: &Config,
    settings: vitalwatch_connectors::source::kafka::KafkaSettings,
    handle: SourceHandle,
) -> anyhow::Result<vitalwatch_connectors::source::kafka::KafkaSource> {
    let store = CatalogAt::of(cfg).open_in_pipeline()?;
    Ok(vitalwatch_connectors::source::kafka::KafkaSource::new(
        settings,
        handle,
        store,
        warehouse_root(&cfg.data_dir),
        cfg.pipeline.checkpoint_interval.to_std(),
    )
    .for_replica(&replica_id(&cfg.data_dir, true)?))
}

/// Root of the Parquet warehouse inside the data directory.
pub fn warehouse_root(data: &Path) -> PathBuf {
    data.join("warehouse")
}

/// The warehouse writer's settings: `config`'s `[warehouse]` under `data`.
pub fn warehouse_config(config: &Config, data: &Path) -> WarehouseConfig {
    WarehouseConfig {
        root: warehouse_root(data),
        batch_rows: config.warehouse.batch_rows,
        roll_rows: config.warehouse.roll_rows,
        roll_interval: config.warehouse.roll_interval.to_std(),
        zstd_level: config.warehouse.zstd_level,
    }
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
        replica_id(data, true)?;
        let cat_at = CatalogAt::of(config);
        let catalog = cat_at.open()?;
        let patients = catalog.patients().context("cannot load patients")?;
        let table = catalog.thresholds().context("cannot load thresholds")?;
        tracing::info!(
            patients = patients.len(),
            bands = table.bands.len(),
            version = table.version,
            profile = config.rules.profile.as_str(),
            "reference data loaded"
        );
        metrics.threshold_version.store(
            u64::from(table.version),
            std::sync::atomic::Ordering::Relaxed,
        );
        let (control_tx, control_rx) = flume::bounded(64);
        let watch = match opts.reference_refresh {
            Some(every) => Some(watch_reference(
                cat_at.clone(),
                (patients.clone(), table.clone()),
                control_tx.clone(),
                every,
            )?),
            None => None,
        };
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

        let wh = warehouse_config(config, data);
        // Files the last run never published: their rows are re-read from resumable
        // sources, or were never promised durable (live data before its checkpoint).
        let removed = remove_unpublished(&wh.root).context("cannot clean up the warehouse")?;
        if removed.unpublished > 0 {
            tracing::info!(
                files = removed.unpublished,
                "removed unpublished warehouse files of an earlier run"
            );
        }
        let mut sink = ParquetSink::new(wh.clone()).context("cannot open the warehouse")?;
        if opts.publish_at_checkpoints_only {
            sink = sink.publish_only_at_checkpoints();
        }
        let archive = {
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("archive".into())
                .spawn(move || archive_loop(sink, archive_rx, &metrics))?
        };

        // A shared catalog: this replica delivers its own outbox (once an adopter that
        // took it over while this replica was down is done) and adopts dead ones'.
        let leases = match &cat_at {
            CatalogAt::Postgres { url, data_dir } => Some(crate::adopt::Leases::start(
                url,
                &replica_id(data_dir, false)?,
                config.pipeline.outbox_lease.to_std(),
                config
                    .notifiers
                    .iter()
                    .filter(|n| n.name() != config.alerts.fallback)
                    .cloned()
                    .collect(),
                Arc::new(crate::routing::Routes(config.routes.clone())),
                metrics.clone(),
            )?),
            CatalogAt::Sqlite(_) => None,
        };
        let audit = spawn_audit_copier(cat_at.clone(), wh.clone())?;
        let upload = match vitalwatch_connectors::warehouse::remote::installed() {
            Some(r) => Some(spawn_uploader(r, wh.clone())?),
            None => None,
        };
        // Notifiers: each takes the outbox from its own cursor on its own thread, so a
        // slow one never holds up the alert path or another notifier.
        let mut outputs: Vec<Box<dyn Notifier>> = vec![Box::new(
            AlertArchiver::new(wh).context("cannot open the warehouse")?,
        )];
        if config.alerts.jsonl {
            let path = config.data_dir.join("alerts.jsonl");
            outputs.push(Box::new(JsonlNotifier::open(&path).with_context(|| {
                format!("cannot open alert log {}", path.display())
            })?));
        }
        // The fallback takes only what another notifier gave up on (see `rescue`).
        let fallback = config
            .notifiers
            .iter()
            .find(|n| n.name() == config.alerts.fallback)
            .cloned();
        let mut external = std::collections::HashSet::new();
        let routes = Arc::new(crate::routing::Routes(config.routes.clone()));
        for n in &config.notifiers {
            if Some(n.name()) != fallback.as_ref().map(NotifierConfig::name) {
                for lane in crate::routing::Lane::BOTH {
                    external.insert(lane.cursor_name(n.name()));
                    outputs.push(filtered_notifier(
                        n,
                        lane,
                        &routes,
                        Some(cat_at.open()?),
                        &metrics,
                    )?);
                }
            }
        }
        if opts.console && config.alerts.console {
            outputs.push(Box::new(ConsolePrinter {
                colour: crate::commands::colour_on(std::io::stdout().is_terminal()),
                names: config.alerts.console_names,
            }));
        }
        let mut wake = Vec::new();
        let mut notifiers = Vec::new();
        let (records_tx, records_rx) = flume::unbounded();
        for n in outputs {
            let (tx, rx) = flume::bounded(NOTIFY_QUEUE);
            let store = cat_at.open()?;
            let name = n.name().to_owned();
            let metrics = metrics.clone();
            let records = records_tx.clone();
            // Built-in outputs (warehouse, alert log, console) have no fallback and raise
            // no technical alarm: they are this process's own records, not people.
            let rescue = external.contains(&name).then(|| Rescue {
                fallback: fallback.clone(),
                instance: None,
            });
            let handle = std::thread::Builder::new()
                .name(format!("notify-{name}"))
                .spawn(move || {
                    let r = notifier_loop(n, rescue, store, rx, records, &metrics);
                    if let Err(e) = &r {
                        // Said at once, not only at shutdown: its events wait in the outbox.
                        tracing::error!(error = %format!("{e:#}"), "a notifier stopped; its alert events wait in the outbox for the next start");
                    }
                    r
                })?;
            wake.push(tx);
            notifiers.push((name, handle));
        }
        drop(records_tx);

        let alerts = {
            // SQLite: the alert writer's own connection never checkpoints the WAL; a
            // thread does, off the alert path. (PostgreSQL has its own checkpointer.)
            let (catalog, checkpointer): (Box<dyn Store>, _) = match &cat_at {
                CatalogAt::Sqlite(p) => {
                    drop(catalog);
                    (
                        cat_at.open_in_pipeline()?,
                        Some(spawn_checkpointer(p.clone())?),
                    )
                }
                CatalogAt::Postgres { .. } => (catalog, None),
            };
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("alerts".into())
                .spawn(move || {
                    let r = alert_loop(catalog, alert_rx, wake, records_rx, &metrics);
                    drop(checkpointer);
                    r
                })?
        };
        let engine = {
            let metrics = metrics.clone();
            let clock = match opts.clock {
                Clock::Wall => EngineClock::Wall,
                // A step of the stream larger than the lateness window needs a second
                // reading to confirm it, so one fast device clock cannot drag re-notify,
                // stale-device and eviction times ahead.
                Clock::Stream => EngineClock::Stream(StreamClock::new(config.time.lateness)),
            };
            let io = EngineIo {
                ingest: ingest_rx,
                control: control_rx,
                alerts: alert_tx,
                archive: archive_tx,
            };
            std::thread::Builder::new()
                .name("engine".into())
                .spawn(move || engine_loop(engine, clock, io, &metrics))?
        };
        Ok(Pipeline {
            handle: Some(PipelineHandle {
                source: SourceHandle {
                    ingest: ingest_tx,
                    control: control_tx,
                    counters: metrics.sources.clone(),
                    time: config.time.clone(),
                    stamps: Arc::new(IngestStamps::default()),
                },
                metrics,
                catalog: cat_at,
            }),
            engine,
            alerts,
            archive,
            notifiers,
            watch,
            audit,
            upload,
            leases,
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
        let sqlite = matches!(
            self.handle.as_ref().map(|h| &h.catalog),
            Some(CatalogAt::Sqlite(_))
        );
        self.handle = None;
        if let Some((stop, watcher)) = self.watch.take() {
            drop(stop);
            // Waited for on SQLite only, where its open connection would keep the WAL
            // (the watcher ends within one catalog read); a database server that hangs
            // must not hold up the shutdown.
            if sqlite {
                // Its own error only says the engine had stopped; the engine's join says why.
                let _ = watcher
                    .join()
                    .map_err(|_| anyhow!("reference watch thread panicked"))?;
            }
        }
        let join = |name: &str, r: std::thread::Result<anyhow::Result<()>>| -> anyhow::Result<()> {
            r.map_err(|_| anyhow!("{name} thread panicked"))?
        };
        join("engine", self.engine.join())?;
        join("alert", self.alerts.join())?;
        let mut warehouse = self
            .archive
            .join()
            .map_err(|_| anyhow!("archive thread panicked"))??;
        // The alert thread ended once every notifier had delivered the outbox to its end
        // (it records their deliveries); their counts are what is left to collect.
        for (name, h) in self.notifiers {
            let delivered = h
                .join()
                .map_err(|_| anyhow!("notifier {name} panicked"))??;
            if name == "warehouse" {
                warehouse.alerts.rows_committed = delivered;
            }
        }
        let (stop, copier) = self.audit;
        drop(stop);
        warehouse.audit.rows_committed = copier
            .join()
            .map_err(|_| anyhow!("audit copy thread panicked"))??;
        // Last: every writer above has published its files; the uploader sends them all.
        if let Some((stop, uploader)) = self.upload.take() {
            drop(stop);
            uploader
                .join()
                .map_err(|_| anyhow!("upload thread panicked"))??;
        }
        if let Some(l) = self.leases.take() {
            l.stop();
        }
        Ok(Summary {
            observations: metrics.observations.load(Relaxed),
            readings: metrics.readings.load(Relaxed),
            alerts: metrics.alerts_total(),
            alert_events: metrics.alert_events.load(Relaxed),
            dead_letters: metrics.sources.dead_letters.load(Relaxed),
            unclassified: metrics.unclassified.load(Relaxed),
            warehouse,
            elapsed: self.started.elapsed(),
        })
    }
}

/// New outbox entries handed from the alert path to a notifier.
#[derive(Debug)]
struct Handover {
    /// The last sequence number handed over before these (0: none yet). A notifier that
    /// got less missed a handover (its queue was full) and reads the gap from the store;
    /// gaps in the numbers themselves (re-processed events take none) are not misses.
    after: u64,
    items: Vec<OutboxItem>,
}

/// Most alert events per message on the alert channel.
const ALERT_CHUNK: usize = 256;

/// Batches queued per notifier before the alert path stops handing them over (the
/// notifier then catches up from the store: a slow notifier never holds up an alarm).
const NOTIFY_QUEUE: usize = 16;

/// The clock the engine thread injects.
enum EngineClock {
    Wall,
    Stream(StreamClock),
}

/// Ticks come once a second of the injected clock.
const TICK: Duration = Duration::from_secs(1);

/// The engine thread's channels.
struct EngineIo {
    ingest: flume::Receiver<IngestMsg>,
    control: flume::Receiver<Control>,
    alerts: flume::Sender<AlertMsg>,
    archive: flume::Sender<ArchiveMsg>,
}

/// What the engine thread waits for next.
enum Next {
    Ingest(Result<IngestMsg, flume::RecvError>),
    Control(Result<Control, flume::RecvError>),
}

fn engine_loop(
    mut engine: Engine,
    mut clock: EngineClock,
    io: EngineIo,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut findings = Findings::default();
    let mut last_tick = Timestamp(i64::MIN);
    // The stream clock's time, for acknowledgements during a replay.
    let mut stream_now = Timestamp(i64::MIN);
    let mut scratch = Vec::with_capacity(256 * 1024);
    let mut shared = JsonFragments::default();
    let mut emit = |findings: &mut Findings| {
        // Chunks bound the alert queue by events, not batches: a classic-profile replay
        // turns one batch into thousands of alerts.
        while !findings.events.is_empty() {
            let n = findings.events.len().min(ALERT_CHUNK);
            let chunk: Vec<AlertEvent> = findings.events.drain(..n).collect();
            let _ = io.alerts.send(AlertMsg::Events(with_texts(
                chunk,
                &mut scratch,
                &mut shared,
            )));
        }
        if !findings.unclassified.is_empty() {
            metrics
                .unclassified
                .fetch_add(findings.unclassified.len() as u64, Relaxed);
            let _ = io.archive.send(ArchiveMsg::Unclassified(std::mem::take(
                &mut findings.unclassified,
            )));
        }
        if !findings.scores.is_empty() {
            let _ = io
                .archive
                .send(ArchiveMsg::Scores(std::mem::take(&mut findings.scores)));
        }
    };
    let mut control_open = true;
    loop {
        // Control first: an acknowledgement never waits behind queued readings.
        let next = if let Ok(c) = io.control.try_recv() {
            Some(Next::Control(Ok(c)))
        } else if control_open {
            flume::Selector::new()
                .recv(&io.control, Next::Control)
                .recv(&io.ingest, Next::Ingest)
                .wait_timeout(std::time::Duration::from_millis(200))
                .ok()
        } else {
            match io
                .ingest
                .recv_timeout(std::time::Duration::from_millis(200))
            {
                Ok(m) => Some(Next::Ingest(Ok(m))),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => {
                    Some(Next::Ingest(Err(flume::RecvError::Disconnected)))
                }
            }
        };
        match next {
            None => {}
            Some(Next::Ingest(Ok(IngestMsg::Batch(mut batch)))) => {
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
                    readings -= reject(&mut batch, rejected, &io.archive, metrics);
                }
                metrics.observations.fetch_add(batch.len() as u64, Relaxed);
                metrics.readings.fetch_add(readings, Relaxed);
                // Alerts first: the archive channel may make us wait, the alarm must not.
                emit(&mut findings);
                let _ = io.archive.send(ArchiveMsg::Observations(batch));
            }
            Some(Next::Ingest(Ok(IngestMsg::DeadLetters(d)))) => {
                let _ = io.archive.send(ArchiveMsg::DeadLetters(d));
            }
            Some(Next::Ingest(Ok(IngestMsg::Checkpoint(cp)))) => {
                // After the findings of everything before it, on both paths.
                emit(&mut findings);
                let _ = io.alerts.send(AlertMsg::Checkpoint(cp.clone()));
                let _ = io.archive.send(ArchiveMsg::Checkpoint(cp));
            }
            Some(Next::Ingest(Err(_))) => break,
            Some(Next::Control(Ok(Control::Ack {
                alert_id,
                by,
                reply,
            }))) => {
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
            Some(Next::Control(Ok(Control::Resync { reply }))) => {
                emit(&mut findings);
                let _ = reply.send(resync(&mut engine, &io.alerts));
            }
            Some(Next::Control(Ok(Control::Reload { patients, table }))) => {
                tracing::info!(
                    patients = patients.len(),
                    bands = table.bands.len(),
                    version = table.version,
                    "reference data reloaded from the catalog"
                );
                metrics
                    .threshold_version
                    .store(u64::from(table.version), Relaxed);
                metrics.reference_reloads.fetch_add(1, Relaxed);
                engine.load_reference(patients, table);
            }
            // Every control sender is gone: only ingest is read from now on.
            Some(Next::Control(Err(_))) => control_open = false,
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

/// Makes the engine's open alerts the alert store's (partitions moved between replicas
/// sharing it): asks the alert thread for them once it has recorded every event emitted
/// so far, so the store is the truth for each alert. The engine waits meanwhile: no event
/// can slip in between. (The classic profile keeps no alert open: nothing to ask.)
fn resync(engine: &mut Engine, alerts: &flume::Sender<AlertMsg>) -> Result<usize, String> {
    if engine.rules().profile == Profile::Classic {
        return Ok(0);
    }
    let (tx, rx) = flume::bounded(1);
    alerts
        .send(AlertMsg::OpenAlerts(tx))
        .map_err(|_| "the alert path has stopped".to_owned())?;
    let open = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .map_err(|_| "no answer from the alert path in 30 s".to_owned())??;
    Ok(engine.resync(open))
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
    metrics
        .sources
        .dead_letters
        .fetch_add(dead.len() as u64, Relaxed);
    tracing::warn!(count = dead.len(), reason = %rejected[0].1, "observations refused by the engine");
    let _ = archive_tx.send(ArchiveMsg::DeadLetters(dead));
    readings
}

/// Reads the catalog's reference data every `every` and sends it to the engine when it
/// differs from what the engine has (`current`): a threshold import by another replica
/// or an update in the database takes effect without a restart. Stops when the returned
/// sender drops (join the handle to wait for its connection to close), or with an error
/// once the engine is gone. A catalog that cannot be read is logged and tried again.
fn watch_reference(
    at: CatalogAt,
    mut current: (
        Vec<vitalwatch_core::model::Patient>,
        vitalwatch_core::reference::ThresholdTable,
    ),
    control: flume::Sender<Control>,
    every: std::time::Duration,
) -> anyhow::Result<(flume::Sender<()>, JoinHandle<anyhow::Result<u64>>)> {
    let mut store = Some(at.open()?);
    spawn_periodic("reference-watch", every, move |last| {
        if last {
            return Ok(0);
        }
        let s = match &store {
            Some(s) => s,
            None => match at.open() {
                Ok(s) => store.insert(s),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reference data: cannot open the catalog");
                    return Ok(0);
                }
            },
        };
        let fresh = s.patients().and_then(|p| Ok((p, s.thresholds()?)));
        match fresh {
            Ok(fresh) if fresh != current => {
                current = fresh.clone();
                control
                    .send(Control::Reload {
                        patients: fresh.0,
                        table: fresh.1,
                    })
                    .map_err(|_| anyhow!("the engine has stopped"))?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reference data: cannot read the catalog; trying again");
                // A new connection next time (a restarted database server).
                store = None;
            }
        }
        Ok(0)
    })
}

/// A thread that calls `tick(false)` every `every` until the returned sender is dropped,
/// then `tick(true)` once more and ends; its result is the sum of what the ticks
/// returned, or the first error a tick returned (a tick logs and swallows what it will
/// retry).
fn spawn_periodic(
    name: &str,
    every: std::time::Duration,
    mut tick: impl FnMut(bool) -> anyhow::Result<u64> + Send + 'static,
) -> anyhow::Result<(flume::Sender<()>, JoinHandle<anyhow::Result<u64>>)> {
    let (tx, rx) = flume::bounded::<()>(1);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut total = 0;
            loop {
                let last = matches!(
                    rx.recv_timeout(every),
                    Err(flume::RecvTimeoutError::Disconnected)
                );
                total += tick(last)?;
                if last {
                    return Ok(total);
                }
            }
        })?;
    Ok((tx, handle))
}

/// Copies the catalog's audit trail into the warehouse every `roll_interval` (see
/// [`AuditCopier`]) and once more when the sender drops; returns how many rows it copied.
fn spawn_audit_copier(
    at: CatalogAt,
    wh: WarehouseConfig,
) -> anyhow::Result<(flume::Sender<()>, JoinHandle<anyhow::Result<u64>>)> {
    let every = wh.roll_interval.max(std::time::Duration::from_millis(100));
    let mut copier = AuditCopier::new(wh);
    let mut store: Option<Box<dyn Store>> = None;
    spawn_periodic("audit-copy", every, move |_| {
        let r = match &mut store {
            Some(s) => copier.copy(&mut **s).map_err(anyhow::Error::from),
            None => at.open().and_then(|s| {
                let s: &mut Box<dyn Store> = store.insert(s);
                Ok(copier.copy(&mut **s)?)
            }),
        };
        Ok(r.unwrap_or_else(|e| {
            // The rows wait in the catalog: the next tick (or run) copies them.
            tracing::warn!(error = %format!("{e:#}"), "cannot copy the audit trail into the warehouse; trying again later");
            store = None;
            0
        }))
    })
}

/// On object storage: moves the warehouse's published files to the bucket every few
/// seconds (a fifth of `roll_interval`, at least every 100 ms) and once more at stop; an
/// upload that fails is retried at the next tick (the files wait in the spool), and at
/// stop is an error. Returns how many files it uploaded.
fn spawn_uploader(
    remote: &'static vitalwatch_connectors::warehouse::remote::ObjectWarehouse,
    wh: WarehouseConfig,
) -> anyhow::Result<(flume::Sender<()>, JoinHandle<anyhow::Result<u64>>)> {
    let every = (wh.roll_interval / 5).max(std::time::Duration::from_millis(100));
    spawn_periodic("warehouse-upload", every, move |last| {
        match remote.upload(&wh.root) {
            Ok(done) => Ok(done.files),
            Err(e) if last => Err(anyhow!(e).context(format!(
                "cannot upload the warehouse to {}; the files wait in {} for the next run",
                remote.url(),
                wh.root.display()
            ))),
            Err(e) => {
                tracing::warn!(error = %e, warehouse = %remote.url(), "upload failed; trying again");
                Ok(0)
            }
        }
    })
}

/// How often the checkpointer folds the catalog's WAL into the database. Every second left
/// a flood's last second of WAL (tens of MB) to be copied and fsynced after the last event,
/// while nothing else ran: 0.1–0.2 s of a 2-second replay. Every 250 ms the copying overlaps
/// the work; 100 ms measured no better. (On a quiet ward the WAL is empty: a no-op.)
const CATALOG_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Checkpoints the catalog's WAL from its own connection every
/// [`CATALOG_CHECKPOINT_EVERY`], off the alert path (see
/// [`SqliteCatalog::disable_autocheckpoint`]).
fn spawn_checkpointer(path: PathBuf) -> anyhow::Result<Checkpointer> {
    let cat = SqliteCatalog::open(&path)
        .with_context(|| format!("cannot open catalog {}", path.display()))?;
    let (stop, handle) = spawn_periodic("checkpoint", CATALOG_CHECKPOINT_EVERY, move |_| {
        if let Err(e) = cat.checkpoint() {
            tracing::warn!(error = %e, "catalog checkpoint failed");
        }
        Ok(0)
    })?;
    Ok(Checkpointer {
        stop: Some(stop),
        handle: Some(handle),
    })
}

/// The checkpointer thread. Dropping it stops the thread after a last checkpoint and
/// waits for it: its connection is closed before the process ends, so the last
/// connection to close can fold the WAL into the database and remove it (an unjoined
/// thread left a flood's 200 MB WAL behind).
struct Checkpointer {
    stop: Option<flume::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The alert path: records each burst of events, with an outbox row per new event, in
/// one store transaction, then hands the new ones to the notifiers. Events the store
/// could not take are kept and retried (checkpoints fail meanwhile): an alarm is never
/// dropped because a disk hiccuped.
fn alert_loop(
    mut store: Box<dyn Store>,
    rx: flume::Receiver<AlertMsg>,
    notifiers: Vec<flume::Sender<Arc<Handover>>>,
    records: flume::Receiver<DeliveryAttempt>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let mut unrecorded: Vec<Texted> = Vec::new();
    let mut retries_at_close = 0;
    // The last outbox sequence number handed to the notifiers.
    let mut handed = 0;
    loop {
        // A second at most: delivery records are written on a quiet ward too, and events
        // the store refused are retried.
        let first = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(m) => Some(m),
            Err(flume::RecvTimeoutError::Timeout) => None,
            Err(flume::RecvTimeoutError::Disconnected) if unrecorded.is_empty() => break,
            Err(flume::RecvTimeoutError::Disconnected) => {
                retries_at_close += 1;
                if retries_at_close > 10 {
                    anyhow::bail!(
                        "{} alert events could not be recorded in the alert store",
                        unrecorded.len()
                    );
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                None
            }
        };
        let mut events = std::mem::take(&mut unrecorded);
        let mut checkpoints = Vec::new();
        let mut questions = Vec::new();
        // Take whatever else is queued: one store transaction per burst.
        let mut next = first;
        while let Some(m) = next.take() {
            match m {
                // The first burst's vector is kept as it is (no copy of its events).
                AlertMsg::Events(e) if events.is_empty() => events = e,
                AlertMsg::Events(e) => events.extend(e),
                AlertMsg::Checkpoint(cp) => checkpoints.push(cp),
                AlertMsg::OpenAlerts(reply) => questions.push(reply),
            }
            if events.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        if !events.is_empty()
            && let Err((e, kept)) = record(&mut *store, events, &notifiers, &mut handed, metrics)
        {
            metrics.alert_output_errors.fetch_add(1, Relaxed);
            tracing::error!(error = %format!("{e:#}"), events = kept.len(), "cannot record alert events; retrying");
            unrecorded = kept;
        }
        for cp in checkpoints {
            let r = if unrecorded.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} alert events not yet recorded",
                    unrecorded.len()
                ))
            };
            cp.confirm(CheckpointPath::Alerts, r);
        }
        for reply in questions {
            let answer = if unrecorded.is_empty() {
                store.open_alerts_to_restore().map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "{} alert events not yet recorded",
                    unrecorded.len()
                ))
            };
            let _ = reply.send(answer);
        }
        record_deliveries(&mut *store, &records);
    }
    // The notifiers deliver the outbox to its end once they are told no more comes; their
    // last delivery records arrive until the last one is done.
    drop(notifiers);
    while let Ok(first) = records.recv() {
        let mut batch = vec![first];
        batch.extend(records.try_iter());
        write_deliveries(&mut *store, &batch);
    }
    Ok(())
}

/// Records the delivery attempts the notifiers reported so far (this thread is the
/// store's one writer: notifiers never wait for its lock).
fn record_deliveries(store: &mut dyn Store, records: &flume::Receiver<DeliveryAttempt>) {
    let batch: Vec<DeliveryAttempt> = records.try_iter().collect();
    if !batch.is_empty() {
        write_deliveries(store, &batch);
    }
}

fn write_deliveries(store: &mut dyn Store, batch: &[DeliveryAttempt]) {
    if let Err(e) = store.record_deliveries(batch) {
        // Not recorded: delivered again after a restart (at least once).
        tracing::error!(error = %e, attempts = batch.len(), "cannot record deliveries");
    }
}

/// Each event with its JSON text. (An AlertEvent has only strings, numbers and
/// timestamps: serializing it cannot fail; an empty text would be recorded and seen, not
/// lost.)
fn with_texts(
    events: Vec<AlertEvent>,
    scratch: &mut Vec<u8>,
    shared: &mut JsonFragments,
) -> Vec<Texted> {
    // The chunk's texts are written one after another into a reused buffer, then copied
    // once into one shared allocation (made here, not on the alert thread); each event
    // keeps its slice. A text that failed to write is cut back to nothing.
    scratch.clear();
    let mut ranges = Vec::with_capacity(events.len());
    for e in &events {
        let start = scratch.len();
        if e.write_json_shared(scratch, shared).is_err() {
            scratch.truncate(start);
        }
        ranges.push(start..scratch.len());
    }
    let buf: Arc<str> = match std::str::from_utf8(scratch) {
        Ok(text) => Arc::from(text),
        Err(_) => Arc::from(""),
    };
    events
        .into_iter()
        .zip(SharedText::split(buf, ranges))
        .collect()
}

/// Records one burst; hands the new events to the notifiers. On error, gives the events
/// back to be tried again.
fn record(
    store: &mut dyn Store,
    events: Vec<Texted>,
    notifiers: &[flume::Sender<Arc<Handover>>],
    handed: &mut u64,
    metrics: &Metrics,
) -> Result<(), (anyhow::Error, Vec<Texted>)> {
    let pairs: Vec<(&AlertEvent, &str)> = events.iter().map(|(e, t)| (e, &**t)).collect();
    let seqs = match store.record_alert_events(&pairs) {
        Ok(s) => s,
        Err(e) => return Err((e.into(), events)),
    };
    let now = wall_now();
    let mut fresh = Vec::with_capacity(events.len());
    for ((e, body), seq) in events.into_iter().zip(seqs) {
        let Some(seq) = seq else {
            metrics.alert_events_replayed.fetch_add(1, Relaxed);
            continue;
        };
        metrics.alert_events.fetch_add(1, Relaxed);
        if e.event == AlertEventKind::Triggered {
            metrics.alert_triggered(e.priority);
            metrics.observe_latency(now.since(e.input_message_time).micros());
        }
        fresh.push(OutboxItem::new(seq, e, body));
    }
    if let Some(last) = fresh.last().map(|i| i.seq) {
        metrics.outbox_head.fetch_max(last, Relaxed);
        let fresh = Arc::new(Handover {
            after: std::mem::replace(handed, last),
            items: fresh,
        });
        for n in notifiers {
            // Full queue: that notifier catches up from the store.
            let _ = n.try_send(fresh.clone());
        }
    }
    Ok(())
}

/// One notifier's worker: takes outbox entries in order (handed over by the alert path,
/// or read back from the store after a gap, a restart or a full queue), delivers them in
/// batches, retries transient failures with capped exponential backoff, records every
/// attempt and moves the notifier's cursor. Ends when the alert path has closed and the
/// outbox is delivered to its end; returns how many entries it delivered.
fn notifier_loop(
    mut notifier: Box<dyn Notifier>,
    mut rescue: Option<Rescue>,
    store: Box<dyn Store>,
    rx: flume::Receiver<Arc<Handover>>,
    records: flume::Sender<DeliveryAttempt>,
    metrics: &Metrics,
) -> anyhow::Result<u64> {
    let name = notifier.name().to_owned();
    let gauge = metrics.notifier(&name);
    let stored = store.cursor(&name)?;
    let cursor = notifier
        .resume(stored, &*store)
        .with_context(|| format!("notifier {name} cannot resume"))?;
    if cursor > stored {
        tracing::info!(notifier = %name, stored, cursor, "delivered before the crash, not again");
        let _ = records.send(DeliveryAttempt {
            consumer: name.clone(),
            first_seq: stored + 1,
            last_seq: cursor,
            attempt: 1,
            at: wall_now(),
            outcome: DeliveryOutcome::Delivered,
            error: None,
        });
    }
    gauge.delivered_seq.store(cursor, Relaxed);
    let mut queue = OutboxQueue {
        fetched: cursor,
        items: Vec::new(),
        since: None,
    };
    queue.catch_up(&*store, u64::MAX)?;
    metrics.outbox_head.fetch_max(queue.fetched, Relaxed);
    let max = notifier.max_batch().max(1);
    let linger = notifier.linger();
    let mut delivered = 0u64;
    let mut closing = false;
    loop {
        let wait = match queue.since {
            Some(t) => linger.saturating_sub(t.elapsed()),
            None => std::time::Duration::from_secs(1),
        };
        match rx.recv_timeout(wait) {
            Ok(batch) => queue.take(&*store, &batch)?,
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => closing = true,
        }
        while let Ok(batch) = rx.try_recv() {
            queue.take(&*store, &batch)?;
        }
        if closing {
            // Whatever the alert path recorded but could not hand over.
            queue.catch_up(&*store, u64::MAX)?;
        }
        let due = |q: &OutboxQueue| {
            !q.items.is_empty()
                && (closing
                    || q.items.len() >= max
                    || q.since.is_some_and(|t| t.elapsed() >= linger))
        };
        while due(&queue) {
            let n = queue.items.len().min(max);
            let batch: Vec<OutboxItem> = queue.items.drain(..n).collect();
            if queue.items.is_empty() {
                queue.since = None;
            }
            match deliver(notifier.as_mut(), &records, &batch, closing, metrics) {
                Some(outcome) => {
                    if outcome == DeliveryOutcome::GaveUp
                        && let Some(r) = rescue.as_mut()
                    {
                        let left: Vec<OutboxItem> = batch
                            .iter()
                            .filter(|i| !notifier.went_out(i))
                            .cloned()
                            .collect();
                        r.rescue(&name, &left, &records, metrics);
                    }
                    delivered += batch.len() as u64;
                    gauge
                        .delivered_seq
                        .store(batch[batch.len() - 1].seq, Relaxed);
                }
                None => {
                    tracing::warn!(
                        notifier = %name,
                        undelivered = batch.len() + queue.items.len(),
                        "stopping with undelivered alert events; the next start delivers them"
                    );
                    return Ok(delivered);
                }
            }
        }
        if closing {
            return Ok(delivered);
        }
    }
}

/// What happens to events an external notifier gave up on: the fallback notifier gets
/// them at once (`alerts.fallback`); what it cannot deliver either, or every such event
/// when there is no fallback, raises the technical alarm (an error on the console and
/// `vitalwatch_alerts_undeliverable_total`): somebody must know that nobody was told.
struct Rescue {
    fallback: Option<NotifierConfig>,
    /// Made on first use.
    instance: Option<Box<dyn Notifier>>,
}

impl Rescue {
    fn rescue(
        &mut self,
        from: &str,
        batch: &[OutboxItem],
        records: &flume::Sender<DeliveryAttempt>,
        metrics: &Metrics,
    ) {
        if batch.is_empty() {
            return;
        }
        let mut delivered = false;
        if let Some(cfg) = &self.fallback {
            if self.instance.is_none() {
                match external_notifier(cfg) {
                    Ok(n) => self.instance = Some(n),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot create the fallback notifier")
                    }
                }
            }
            if let Some(f) = self.instance.as_mut() {
                // A few tries: the fallback is the last resort, not a queue.
                delivered = deliver(f.as_mut(), records, batch, true, metrics)
                    == Some(DeliveryOutcome::Delivered);
                if delivered {
                    tracing::warn!(
                        notifier = from,
                        fallback = cfg.name(),
                        events = batch.len(),
                        "delivered through the fallback notifier"
                    );
                }
            }
        }
        if !delivered {
            metrics
                .alerts_undeliverable
                .fetch_add(batch.len() as u64, Relaxed);
            for item in batch {
                let what = item
                    .event()
                    .map(|e| {
                        format!(
                            "{} {} (alert {})",
                            e.priority.as_str(),
                            e.event.as_str(),
                            e.alert_id
                        )
                    })
                    .unwrap_or_else(|_| format!("outbox entry {}", item.seq));
                tracing::error!(
                    notifier = from,
                    "TECHNICAL ALARM: nobody could be told of {what}: notifier {from} gave up and {}",
                    match &self.fallback {
                        Some(f) => format!("fallback {} failed too", f.name()),
                        None => "no alerts.fallback is configured".to_owned(),
                    }
                );
            }
        }
    }
}

/// Entries a notifier has fetched but not yet delivered.
struct OutboxQueue {
    /// The last sequence number fetched.
    fetched: u64,
    items: Vec<OutboxItem>,
    /// When the oldest waiting entry arrived.
    since: Option<Instant>,
}

impl OutboxQueue {
    fn push(&mut self, item: OutboxItem) {
        self.fetched = item.seq;
        self.items.push(item);
        self.since.get_or_insert_with(Instant::now);
    }

    /// Reads entries after the last fetched one, up to `upto`, from the store.
    fn catch_up(&mut self, store: &dyn Store, upto: u64) -> anyhow::Result<()> {
        while self.fetched < upto {
            let want = (upto - self.fetched).min(4096) as usize;
            let rows = store.outbox_after(self.fetched, want)?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                if r.seq > upto {
                    return Ok(());
                }
                self.push(OutboxItem::from_entry(r));
            }
        }
        Ok(())
    }

    /// Takes a handover from the alert path, reading what it missed from the store first.
    fn take(&mut self, store: &dyn Store, batch: &Handover) -> anyhow::Result<()> {
        if batch.after > self.fetched {
            self.catch_up(store, batch.after)?;
        }
        for item in &batch.items {
            if item.seq > self.fetched {
                self.push(item.clone());
            }
        }
        Ok(())
    }
}

/// Delivers one batch, retrying transient failures (100 ms doubling to 30 s); sends every
/// attempt to the alert thread, the store's one writer, to be recorded. How it ended
/// (delivered or given up), or `None` when it stopped trying because the pipeline is
/// shutting down (`closing`: after three tries).
pub(crate) fn deliver(
    notifier: &mut dyn Notifier,
    records: &flume::Sender<DeliveryAttempt>,
    batch: &[OutboxItem],
    closing: bool,
    metrics: &Metrics,
) -> Option<DeliveryOutcome> {
    let (first, last) = (batch[0].seq, batch[batch.len() - 1].seq);
    let name = notifier.name().to_owned();
    let stats = metrics.notifier(&name);
    for attempt in 1u32.. {
        let r = notifier.deliver(batch);
        let (outcome, error) = match &r {
            Ok(()) => (DeliveryOutcome::Delivered, None),
            Err(NotifyError::Permanent(e)) => (DeliveryOutcome::GaveUp, Some(e.clone())),
            Err(e) => (DeliveryOutcome::Retrying, Some(e.to_string())),
        };
        // Recorded after the fact by the store's writer: a crash before that re-delivers
        // (at least once); the notifier's `resume` and the event keys make it once.
        let _ = records.send(DeliveryAttempt {
            consumer: name.clone(),
            first_seq: first,
            last_seq: last,
            attempt,
            at: wall_now(),
            outcome,
            error: error.clone(),
        });
        match outcome {
            DeliveryOutcome::Delivered => {
                let sent: Vec<&OutboxItem> = batch.iter().filter(|i| notifier.takes(i)).collect();
                let n = sent.len() as u64;
                metrics.notifications_delivered.fetch_add(n, Relaxed);
                stats.delivered.fetch_add(n, Relaxed);
                // Events handed over live (read back from the store after a restart, they
                // are not parsed for this): observation → confirmed delivery.
                let now = wall_now();
                for e in sent.into_iter().filter_map(OutboxItem::event_if_known) {
                    stats
                        .latency
                        .observe(now.since(e.input_message_time).micros().max(0) as u64);
                }
                return Some(outcome);
            }
            DeliveryOutcome::GaveUp => {
                // Events of the batch that went out before it failed are delivered.
                let out = batch.iter().filter(|i| notifier.went_out(i)).count() as u64;
                let failed = batch.len() as u64 - out;
                metrics.notifications_delivered.fetch_add(out, Relaxed);
                stats.delivered.fetch_add(out, Relaxed);
                metrics.notifications_failed.fetch_add(failed, Relaxed);
                stats.failed.fetch_add(failed, Relaxed);
                tracing::error!(notifier = %name, first, last, error = ?error, "giving up on alert events");
                return Some(outcome);
            }
            DeliveryOutcome::Retrying => {
                metrics.notification_retries.fetch_add(1, Relaxed);
                stats.retries.fetch_add(1, Relaxed);
                tracing::warn!(notifier = %name, attempt, error = ?error, "delivery failed; retrying");
                if closing && attempt >= 3 {
                    return None;
                }
                std::thread::sleep(backoff(attempt));
            }
        }
    }
    None
}

/// How long to wait before try `attempt + 1`: 100 ms doubling to 30 s, less a random
/// part of up to half (jitter), so notifiers that failed together do not all retry in the
/// same instant against a server that is coming back.
fn backoff(attempt: u32) -> std::time::Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(9)).min(30_000);
    // Randomness enough for spreading retries: the clock's nanoseconds, mixed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let r = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    std::time::Duration::from_millis(cap - (r % (cap / 2 + 1)))
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
            Ok(ArchiveMsg::DeadLetters(d)) => {
                metrics.archived_rows.fetch_add(d.len() as u64, Relaxed);
                sink.write_dead_letters(&d)
            }
            Ok(ArchiveMsg::Unclassified(u)) => {
                metrics.archived_rows.fetch_add(u.len() as u64, Relaxed);
                sink.write_unclassified(&u)
            }
            Ok(ArchiveMsg::Scores(s)) => {
                metrics.archived_rows.fetch_add(s.len() as u64, Relaxed);
                sink.write_scores(&s)
            }
            Ok(ArchiveMsg::Checkpoint(cp)) => {
                let r = sink.checkpoint(cp.tag.as_deref());
                // Counted and logged before the source hears of it.
                let answer = r.as_ref().map(|_| ()).map_err(|e| e.to_string());
                if let Err(e) = &answer {
                    metrics.archive_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "warehouse checkpoint failed");
                }
                cp.confirm(CheckpointPath::Archive, answer);
                Ok(())
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

impl Notifier for ConsolePrinter {
    fn name(&self) -> &str {
        "console"
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        let mut text = String::with_capacity(batch.len() * 160);
        for item in batch {
            self.format(item.event()?, &mut text);
        }
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not worth retrying.
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| NotifyError::Permanent(format!("stdout: {e}")))
    }
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
