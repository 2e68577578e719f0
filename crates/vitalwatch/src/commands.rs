//! What each subcommand does: loads config, opens what it needs, calls the libraries,
//! prints for people (stdout) and logs for operators (stderr).

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use std::sync::atomic::Ordering::Relaxed;
use tokio_util::sync::CancellationToken;

use vitalwatch_connectors::catalog::SqliteCatalog;
use vitalwatch_connectors::store::{AlertStore, ReferenceStore, SourcePosition};
use vitalwatch_connectors::warehouse::recovery::{position_tag, remove_uncommitted, stream_id};
use vitalwatch_connectors::warehouse::{self, OutputFormat};
use vitalwatch_core::alert::stable_hash;
use vitalwatch_core::clock::{Offered, Reference, StreamClock, TimeConfig, TimeError};
use vitalwatch_core::codec::{InputFormat, decode_record, encode_canonical, encode_classic};
use vitalwatch_core::model::{DeadLetter, Duration, Observation, Timestamp};
use vitalwatch_core::reference::{
    BuiltinTable, THRESHOLD_COLUMNS, THRESHOLD_EXTRA_COLUMNS, parse_patients_csv,
    parse_threshold_csv,
};
use vitalwatch_core::simulate::{SimConfig, Simulator, demo_patients};

use crate::checkpoint::{Outcome, Tracker};
use crate::cli::{
    AlertsCommand, ConfigCommand, DataArgs, PatientsCommand, ReplayArgs, RunArgs, SimFormat,
    SimulateArgs, TableFormat, ThresholdsCommand, WarehouseCommand,
};
use crate::config::{self, Config};
use crate::http;
use crate::metrics::Metrics;
use crate::pipeline::{
    Clock, IngestMsg, Pipeline, PipelineHandle, PipelineOptions, catalog_path, stamp_untimed,
    wall_now, warehouse_root,
};

/// Loads the config file (or defaults) and applies `--data`.
pub fn load_config(args: &DataArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

/// `--quiet`: no confirmation lines.
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One confirmation line for a command that wrote something (what, where, how many), on
/// standard error so standard output stays data; silent with `--quiet`.
pub fn confirm(line: impl std::fmt::Display) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{line}");
    }
}

/// Colour on a terminal only, and never when `NO_COLOR` is set (https://no-color.org).
pub fn colour_on(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes to standard output; a reader that went away (`| head`) ends the output quietly
/// instead of panicking like `print!` does.
pub fn emit(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to standard output"),
    }
}

fn parse_duration(s: &str, what: &str) -> anyhow::Result<Duration> {
    Duration::parse(s).with_context(|| format!("bad {what}"))
}

/// The exclusive hold of a writing command on a data directory, released when dropped
/// (or when the process dies: the operating system drops the lock with it).
#[derive(Debug)]
pub struct DataLock {
    _file: std::fs::File,
}

/// Takes the data directory for a writing command (`run`, `replay`, imports), creating
/// it if needed; names the holder when another process has it. Read commands take no lock
/// and work while `run` holds it.
pub fn lock_data_dir(dir: &Path, what: &str) -> anyhow::Result<DataLock> {
    use std::io::{Read, Seek};
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join(".vitalwatch.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0)?;
            f.rewind()?;
            write!(
                f,
                "`vitalwatch {what}` (pid {}, since {})",
                std::process::id(),
                wall_now()
            )?;
            Ok(DataLock { _file: f })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            bail!(
                "data directory {} is in use by {}; stop it first, or pass another --data",
                dir.display(),
                if holder.is_empty() {
                    "another vitalwatch process".to_owned()
                } else {
                    holder
                }
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A data directory a read command can use: it must exist (read commands never create
/// one, so a mistyped `--data` is an error, not an empty table).
fn existing_data_dir(cfg: &Config) -> anyhow::Result<()> {
    let dir = &cfg.data_dir;
    if dir.is_dir() {
        return Ok(());
    }
    let nearest = dir
        .ancestors()
        .skip(1)
        .find(|a| a.is_dir() && !a.as_os_str().is_empty())
        .map(|a| format!(" (nearest existing directory: {})", a.display()))
        .unwrap_or_default();
    bail!(
        "no data directory {}{nearest}; pass the --data of a `vitalwatch run`, `replay` or import",
        dir.display()
    )
}

/// The catalog of an existing data directory, for reading.
fn open_catalog_read(cfg: &Config) -> anyhow::Result<SqliteCatalog> {
    existing_data_dir(cfg)?;
    let p = catalog_path(&cfg.data_dir);
    if !p.is_file() {
        bail!(
            "no catalog in {}: nothing was imported, run or replayed there yet",
            cfg.data_dir.display()
        );
    }
    SqliteCatalog::open(&p).with_context(|| format!("cannot open catalog {}", p.display()))
}

fn open_catalog(cfg: &Config) -> anyhow::Result<SqliteCatalog> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let p = catalog_path(&cfg.data_dir);
    SqliteCatalog::open(&p).with_context(|| format!("cannot open catalog {}", p.display()))
}

/// First-run set-up: the profile's built-in threshold table when none is loaded (or when
/// the loaded one is the other profile's built-in table; one someone imported is never
/// replaced: [`BuiltinTable::needed`]), and demo patients 1..=n that are missing (existing
/// patients are never overwritten).
pub fn seed_reference(cfg: &Config, demo: usize) -> anyhow::Result<()> {
    let mut cat = open_catalog(cfg)?;
    let current = cat.threshold_versions()?.pop().map(|v| v.source);
    if let Some(builtin) = BuiltinTable::needed(cfg.rules.profile, current.as_deref()) {
        let bands = parse_threshold_csv(builtin.csv.as_bytes())?;
        let v = cat.import_thresholds(&bands, builtin.source, wall_now())?;
        tracing::info!(
            version = v,
            bands = bands.len(),
            profile = cfg.rules.profile.as_str(),
            "loaded the profile's built-in threshold table"
        );
    }
    if demo > 0 {
        let have: std::collections::HashSet<String> = cat
            .patients()?
            .into_iter()
            .map(|p| p.patient_id.0)
            .collect();
        let missing: Vec<_> = demo_patients(demo)
            .into_iter()
            .filter(|p| !have.contains(p.patient_id.as_str()))
            .collect();
        if !missing.is_empty() {
            cat.import_patients(&missing, "demo patients", wall_now())?;
            tracing::info!(added = missing.len(), "added demo patients");
        }
    }
    Ok(())
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Resident memory now, in MiB (Linux; `None` elsewhere).
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `vitalwatch run`
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut cfg = load_config(&args.data)?;
    if let Some(p) = args.profile {
        cfg.rules.profile = p.into();
    }
    if let Some(l) = args.listen {
        cfg.http.listen = l;
    }
    if args.no_simulator {
        cfg.simulator.enabled = false;
    }
    if let Some(n) = args.patients {
        cfg.simulator.patients = n;
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        bail!("invalid settings:\n  - {}", problems.join("\n  - "));
    }
    let duration = args
        .duration
        .as_deref()
        .map(|d| parse_duration(d, "--duration"))
        .transpose()?;
    // Everything that can fail at start-up fails before anything is written: the port,
    // then the data directory's lock.
    let listener = if cfg.http.enabled {
        let addr: SocketAddr = tokio::net::lookup_host(cfg.http.listen.as_str())
            .await
            .with_context(|| format!("cannot resolve http.listen = {}", cfg.http.listen))?
            .next()
            .with_context(|| format!("http.listen = {} resolves to no address", cfg.http.listen))?;
        Some(http::bind(addr).await?)
    } else {
        None
    };
    let _lock = lock_data_dir(&cfg.data_dir, "run")?;
    seed_reference(
        &cfg,
        if cfg.simulator.enabled {
            cfg.simulator.patients
        } else {
            0
        },
    )?;

    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline::start(
        &cfg,
        PipelineOptions {
            clock: Clock::Wall,
            console: true,
            publish_at_checkpoints_only: false,
        },
        metrics,
    )?;
    let cancel = CancellationToken::new();

    let mut http_task = None;
    let mut listening = None;
    if let Some(listener) = listener {
        let (local, task) = http::serve_on(
            listener,
            pipeline.handle(),
            cfg.http.max_body_bytes,
            cancel.clone(),
        )?;
        listening = Some(local);
        http_task = Some(task);
    }
    let sim_thread = if cfg.simulator.enabled {
        let h = pipeline.handle();
        let c = cancel.clone();
        let sc = SimConfig {
            patients: cfg.simulator.patients,
            seed: cfg.simulator.seed,
            start: wall_now(),
            interval: cfg.simulator.interval,
            ..SimConfig::default()
        };
        Some(
            std::thread::Builder::new()
                .name("simulator".into())
                .spawn(move || simulate_live(sc, h, c))?,
        )
    } else {
        None
    };
    eprintln!(
        "vitalwatch ready in {:.0} ms: profile {}, {}, {}, data in {}",
        t0.elapsed().as_secs_f64() * 1e3,
        cfg.rules.profile.as_str(),
        match listening {
            Some(a) => format!("HTTP on http://{a} (POST /v1/readings)"),
            None => "HTTP off".into(),
        },
        if cfg.simulator.enabled {
            format!("simulating {} patients", cfg.simulator.patients)
        } else {
            "simulator off".into()
        },
        cfg.data_dir.display()
    );
    eprintln!("press Ctrl-C to stop");

    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d.to_std()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("cannot listen for Ctrl-C")?; eprintln!("\nstopping: draining in-flight work…"); }
        _ = stop => { eprintln!("stopping after {}: draining in-flight work…", args.duration.unwrap_or_default()); }
    }
    cancel.cancel();
    if let Some(t) = http_task {
        t.await??;
    }
    if let Some(t) = sim_thread {
        let _ = t.join();
    }
    let summary = tokio::task::spawn_blocking(move || pipeline.shutdown()).await??;
    eprintln!("{summary}");
    if let Some(m) = peak_rss_mib() {
        eprintln!("peak memory: {m:.1} MiB");
    }
    Ok(())
}

/// Feeds simulated observations in real time until cancelled.
fn simulate_live(config: SimConfig, h: PipelineHandle, cancel: CancellationToken) {
    let mut sim = Simulator::new(config);
    let mut next = sim.next_observation();
    while !cancel.is_cancelled() {
        let now = wall_now();
        let mut batch = Vec::new();
        while next.observed_at <= now {
            let mut o = std::mem::replace(&mut next, sim.next_observation());
            o.ingested_at = now;
            batch.push(o);
        }
        if !batch.is_empty() {
            h.metrics
                .received
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if h.ingest.send(IngestMsg::Batch(batch)).is_err() {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `vitalwatch replay`
pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(&args.data)?;
    if let Some(p) = args.profile {
        cfg.rules.profile = p.into();
    }
    for f in &args.files {
        if f.as_os_str() != "-" && !f.is_file() {
            bail!("no such file: {}", f.display());
        }
    }
    let _lock = lock_data_dir(&cfg.data_dir, "replay")?;
    seed_reference(&cfg, args.demo_patients)?;
    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline::start(
        &cfg,
        PipelineOptions {
            clock: Clock::Stream,
            console: args.print_alerts,
            publish_at_checkpoints_only: true,
        },
        metrics,
    )?;
    let h = pipeline.handle();
    let format: InputFormat = args.format.into();
    let total_bytes: u64 = args
        .files
        .iter()
        .filter(|f| f.as_os_str() != "-")
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = progress_bar(total_bytes, "replaying");
    let reader = {
        let bar = bar.clone();
        let files = args.files.clone();
        let time = cfg.time.clone();
        let store = SqliteCatalog::open(&catalog_path(&cfg.data_dir))?;
        let mut source = ReplaySource {
            h,
            tracker: Tracker::default(),
            store,
            warehouse: warehouse_root(&cfg.data_dir),
            interval: cfg.pipeline.checkpoint_interval.to_std(),
            from_start: args.from_start,
        };
        std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn(move || -> anyhow::Result<Vec<String>> {
                // Each file is a recording with its own clock, so files given in any
                // order are judged by their own time; the engine still decides, per
                // device, what is late.
                let mut admission = ReplayAdmission::new(time);
                let mut notes = Vec::new();
                for f in &files {
                    notes.extend(source.replay_file(f, format, &bar, &mut admission)?);
                }
                Ok(notes)
            })?
    };
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    bar.finish_and_clear();
    let summary = pipeline.shutdown()?;
    let notes = read?;
    let mut text = String::new();
    for n in notes {
        text.push_str(&n);
        text.push('\n');
    }
    text.push_str(&format!(
        "{summary}\nalert log: {}\n",
        cfg.data_dir.join("alerts.jsonl").display()
    ));
    if let Some(m) = peak_rss_mib() {
        text.push_str(&format!("peak memory: {m:.1} MiB\n"));
    }
    emit(&text)?;
    Ok(())
}

/// Where a replayed file stands, carried back by its checkpoints.
#[derive(Debug, Clone)]
struct FileCheckpoint {
    /// `None` for standard input (not resumable).
    position: Option<SourcePosition>,
}

/// The file source of `replay`: reads files, sends their records and checkpoints, and
/// commits each file's position once a checkpoint is durable, so the same command after
/// a crash (or a second time) carries on where the durable part ends.
struct ReplaySource {
    h: PipelineHandle,
    tracker: Tracker<FileCheckpoint>,
    store: SqliteCatalog,
    warehouse: PathBuf,
    interval: std::time::Duration,
    from_start: bool,
}

/// Checkpoints in flight before the reader waits for the oldest.
const MAX_OUTSTANDING_CHECKPOINTS: usize = 4;

/// Bytes at the start of a file that identify it (a replaced file starts over).
const FINGERPRINT_BYTES: u64 = 4096;

fn fingerprint(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(FINGERPRINT_BYTES)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:016x}", stable_hash(&[&head])))
}

impl ReplaySource {
    /// Where to start `path`: the committed position of the same file, or the beginning
    /// (removing the warehouse files no committed checkpoint covers either way).
    fn start_position(&mut self, path: &Path) -> anyhow::Result<(SourcePosition, Option<String>)> {
        let canonical = path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let source = format!("file:{}", canonical.display());
        let stream = stream_id(&source);
        let print = fingerprint(path)?;
        let size = std::fs::metadata(path)?.len();
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
        let removed = remove_uncommitted(&self.warehouse, &stream, committed)
            .context("cannot remove warehouse files of an interrupted replay")?;
        if removed.uncommitted > 0 {
            tracing::info!(
                file = %path.display(),
                files = removed.uncommitted,
                "removed warehouse files no committed checkpoint covers; their rows are read again"
            );
        }
        Ok((start, note))
    }

    fn replay_file(
        &mut self,
        path: &Path,
        format: InputFormat,
        bar: &indicatif::ProgressBar,
        adm: &mut ReplayAdmission,
    ) -> anyhow::Result<Option<String>> {
        adm.new_recording();
        let (mut input, name, mut position, note) = if path.as_os_str() == "-" {
            let (input, name, _) = open_input(path)?;
            (input, name, None, None)
        } else {
            let (start, note) = self.start_position(path)?;
            let mut f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            use std::io::Seek as _;
            f.seek(std::io::SeekFrom::Start(start.offset))?;
            bar.inc(start.offset);
            let input: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 20, f));
            (input, path.display().to_string(), Some(start), note)
        };
        let mut offset = position.as_ref().map_or(0, |p| p.offset);
        let mut line = Vec::with_capacity(512);
        let mut received = 0u64;
        let mut unreported = 0u64;
        let mut wall = wall_now();
        let mut last_checkpoint = Instant::now();
        loop {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {name}"))?;
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
                send_batch(&self.h, &mut adm.batch, &mut adm.dead, &mut received)?;
                bar.inc(std::mem::take(&mut unreported));
                wall = wall_now();
                // A checkpoint covers whole records only, and none held back by the
                // admission clock (it may still turn out to be an outlier).
                if last_checkpoint.elapsed() >= self.interval && adm.held.is_none() {
                    self.checkpoint(&mut position, offset)?;
                    last_checkpoint = Instant::now();
                }
            }
        }
        bar.inc(unreported);
        // The end of a recording settles what its clock still held.
        adm.new_recording();
        send_batch(&self.h, &mut adm.batch, &mut adm.dead, &mut received)?;
        self.checkpoint(&mut position, offset)?;
        // Every checkpoint of this file decided before the next file starts.
        let done = self.tracker.drain(std::time::Duration::from_secs(3600));
        self.settle(done)?;
        if self.tracker.outstanding() > 0 {
            bail!("{name}: the pipeline did not confirm the last checkpoint within an hour");
        }
        Ok(note)
    }

    /// Sends a checkpoint for everything read up to `offset`; commits what is decided.
    fn checkpoint(
        &mut self,
        position: &mut Option<SourcePosition>,
        offset: u64,
    ) -> anyhow::Result<()> {
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
            .map_err(|_| anyhow::anyhow!("pipeline stopped"))?;
        let wait = if self.tracker.outstanding() > MAX_OUTSTANDING_CHECKPOINTS {
            std::time::Duration::from_secs(60)
        } else {
            std::time::Duration::ZERO
        };
        let done = self.tracker.poll(wait);
        self.settle(done)
    }

    /// Commits the positions of committed checkpoints; stops at a failed one.
    fn settle(&mut self, done: Vec<(FileCheckpoint, Outcome)>) -> anyhow::Result<()> {
        for (cp, outcome) in done {
            match outcome {
                Outcome::Committed => {
                    self.h.metrics.checkpoints_committed.fetch_add(1, Relaxed);
                    if let Some(mut p) = cp.position {
                        p.at = wall_now();
                        self.store.commit_source_position(&p)?;
                    }
                }
                Outcome::Failed(why) => {
                    self.h.metrics.checkpoints_failed.fetch_add(1, Relaxed);
                    let resume = self
                        .store
                        .source_position(cp.position.as_ref().map_or("", |p| p.source.as_str()))?
                        .map_or(0, |p| p.offset);
                    bail!(
                        "checkpoint failed: {why}\nnothing is lost: run the same command again once the cause is fixed; it continues from byte {resume}"
                    );
                }
            }
        }
        Ok(())
    }
}

/// A progress bar in bytes (see [`progress_bar_styled`]).
pub(crate) fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    progress_bar_styled(
        total,
        what,
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
}

/// A progress bar on standard error, only when it is a terminal (hidden otherwise, and
/// for an empty job), in the given indicatif template.
pub(crate) fn progress_bar_styled(
    total: u64,
    what: &str,
    template: &str,
) -> indicatif::ProgressBar {
    if total == 0 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Observations per batch sent to the engine.
const REPLAY_BATCH: usize = 1024;

/// A JSON-lines input: a file, or standard input for `-`; with a name for messages and
/// its size in bytes (0 for standard input) for a progress bar.
pub(crate) fn open_input(path: &Path) -> anyhow::Result<(Box<dyn BufRead>, String, u64)> {
    if path.as_os_str() == "-" {
        return Ok((
            Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
            "stdin".into(),
            0,
        ));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((
        Box::new(BufReader::with_capacity(1 << 20, f)),
        path.display().to_string(),
        size,
    ))
}

/// Judges a replay's readings against the recording's own clock ([`StreamClock`]): too
/// old, or a jump ahead that no later reading confirms, is a dead letter; a confirmed jump
/// (a gap in the recording) is accepted with the reading that confirmed it.
struct ReplayAdmission {
    time: TimeConfig,
    clock: StreamClock,
    /// The reading held while its jump waits for confirmation, and its dead letter if it
    /// turns out to be an outlier.
    held: Option<(Observation, DeadLetter)>,
    batch: Vec<Observation>,
    dead: Vec<DeadLetter>,
}

impl ReplayAdmission {
    fn new(time: TimeConfig) -> Self {
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
    fn new_recording(&mut self) {
        if let Some(v) = self.clock.finish() {
            self.settle(v);
        }
        self.clock = StreamClock::new(self.time.max_future);
    }
}

fn send_batch(
    h: &PipelineHandle,
    batch: &mut Vec<Observation>,
    dead: &mut Vec<DeadLetter>,
    received: &mut u64,
) -> anyhow::Result<()> {
    h.metrics.received.fetch_add(
        std::mem::take(received),
        std::sync::atomic::Ordering::Relaxed,
    );
    if !dead.is_empty() {
        h.dead_letters(std::mem::take(dead));
    }
    if !batch.is_empty() {
        let b = std::mem::replace(batch, Vec::with_capacity(REPLAY_BATCH));
        h.ingest
            .send(IngestMsg::Batch(b))
            .map_err(|_| anyhow::anyhow!("pipeline stopped"))?;
    }
    Ok(())
}

/// `vitalwatch simulate`
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    if args.patients == 0 {
        bail!("--patients must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be above 0 (observation sets per second over all patients)");
    }
    let duration = parse_duration(&args.duration, "--duration")?;
    let start = Timestamp::parse(&args.start).context("bad --start")?;
    // Each patient reports every patients/rate seconds.
    let interval = Duration((args.patients as f64 / args.rate * 1e6).round().max(1.0) as i64);
    let count = (args.rate * duration.micros() as f64 / 1e6).round() as u64;
    let mut sim = Simulator::new(SimConfig {
        patients: args.patients,
        seed: args.seed,
        start,
        interval,
        ..SimConfig::default()
    });
    let out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?,
        )
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let bar = if args.output.as_os_str() != "-" && count > 100_000 {
        progress_bar_styled(
            count,
            "simulating",
            "{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut line = String::with_capacity(512);
    for i in 0..count {
        let o = sim.next_observation();
        line.clear();
        match args.format {
            SimFormat::Classic => encode_classic(&o, &mut line),
            SimFormat::Canonical => {
                let label = sim
                    .patient_index(&o.patient_id)
                    .and_then(|idx| sim.label_at(idx, o.observed_at))
                    .map(|l| l.to_string());
                encode_canonical(&o, label.as_deref(), &mut line);
            }
        }
        line.push('\n');
        if let Err(e) = out.write_all(line.as_bytes()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("cannot write output");
        }
        if i % 65_536 == 0 {
            bar.set_position(i);
        }
    }
    bar.finish_and_clear();
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write output")
        }
        _ => {
            if args.output.as_os_str() != "-" {
                confirm(format_args!(
                    "wrote {count} observation sets ({} patients, {} format) to {}",
                    args.patients,
                    match args.format {
                        SimFormat::Classic => "classic",
                        SimFormat::Canonical => "canonical",
                    },
                    args.output.display()
                ));
            }
            Ok(())
        }
    }
}

fn output_format(f: TableFormat) -> OutputFormat {
    match f {
        TableFormat::Table => OutputFormat::Table,
        TableFormat::Csv => OutputFormat::Csv,
        TableFormat::Json => OutputFormat::Json,
    }
}

/// `vitalwatch query`
pub async fn query(data: &DataArgs, sql: &str, format: TableFormat) -> anyhow::Result<()> {
    let cfg = load_config(data)?;
    existing_data_dir(&cfg)?;
    let root = warehouse_root(&cfg.data_dir);
    let batches = warehouse::query(&root, sql).await.context("query failed")?;
    let text = warehouse::format_batches(&batches, output_format(format))?;
    emit(&text)?;
    if !text.ends_with('\n') && !text.is_empty() {
        emit("\n")?;
    }
    Ok(())
}

/// Prints rows as a table, CSV or JSON lines.
/// Columns whose cells are numbers (JSON output writes them as numbers).
const NUMERIC_COLUMNS: &[&str] = &[
    "age",
    "spo2_scale",
    "ref_id",
    "low_age_limit",
    "high_age_limit",
    "low_range_value",
    "high_range_value",
    "alert_flag",
    "version",
    "bands",
    "value",
    "events",
];

fn print_rows(headers: &[&str], rows: &[Vec<String>], format: TableFormat) -> anyhow::Result<()> {
    // Built whole, then written: a closed pipe (`| head`) ends the command quietly.
    let mut out: Vec<u8> = Vec::new();
    match format {
        TableFormat::Table => {
            let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
            for r in rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            let line = |out: &mut dyn Write,
                        cells: &mut dyn Iterator<Item = &str>|
             -> std::io::Result<()> {
                let parts: Vec<String> = cells
                    .enumerate()
                    .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                    .collect();
                writeln!(out, "{}", parts.join("  ").trim_end())
            };
            line(&mut out, &mut headers.iter().copied())?;
            line(
                &mut out,
                &mut w
                    .iter()
                    .map(|n| "-".repeat(*n))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            )?;
            for r in rows {
                line(&mut out, &mut r.iter().map(String::as_str))?;
            }
        }
        TableFormat::Csv => {
            let mut wtr = csv_writer(&mut out);
            wtr.write_record(headers)?;
            for r in rows {
                wtr.write_record(r)?;
            }
            wtr.flush()?;
        }
        TableFormat::Json => {
            for r in rows {
                let obj: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .zip(r)
                    .map(|(h, v)| {
                        let typed = match v.parse::<f64>() {
                            _ if v.is_empty() => serde_json::Value::Null,
                            Ok(n)
                                if NUMERIC_COLUMNS.contains(h)
                                    && n.fract() == 0.0
                                    && n.abs() < 9e15 =>
                            {
                                serde_json::json!(n as i64)
                            }
                            Ok(n) if NUMERIC_COLUMNS.contains(h) => serde_json::json!(n),
                            _ => serde_json::Value::String(v.clone()),
                        };
                        ((*h).to_owned(), typed)
                    })
                    .collect();
                writeln!(out, "{}", serde_json::Value::Object(obj))?;
            }
        }
    }
    emit(&String::from_utf8_lossy(&out))
}

fn csv_writer<W: Write>(w: W) -> csv::Writer<W> {
    csv::Writer::from_writer(w)
}

/// `vitalwatch patients …`
pub fn patients(cmd: PatientsCommand) -> anyhow::Result<()> {
    match cmd {
        PatientsCommand::Import { data, file } => {
            let cfg = load_config(&data)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let patients = parse_patients_csv(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let source = format!("patients import {}", file.display());
            let _lock = lock_data_dir(&cfg.data_dir, "patients import")?;
            let r = open_catalog(&cfg)?.import_patients(&patients, &source, wall_now())?;
            confirm(format_args!(
                "{}: {} added, {} updated, {} unchanged, in {}",
                file.display(),
                r.added,
                r.updated.len(),
                r.unchanged,
                catalog_path(&cfg.data_dir).display()
            ));
            for (id, fields) in &r.updated {
                confirm(format_args!(
                    "  updated patient {id}: {}",
                    fields.join(", ")
                ));
            }
        }
        PatientsCommand::List { data, format } => {
            let cfg = load_config(&data)?;
            let ps = open_catalog_read(&cfg)?.patients()?;
            let rows: Vec<Vec<String>> = ps
                .iter()
                .map(|p| {
                    vec![
                        p.patient_id.0.clone(),
                        p.name.clone(),
                        p.age.to_string(),
                        p.ward.clone(),
                        p.phone.clone(),
                        p.address.clone(),
                        match p.spo2_scale {
                            vitalwatch_core::model::Spo2Scale::Scale1 => "1".into(),
                            vitalwatch_core::model::Spo2Scale::Scale2 => "2".into(),
                        },
                    ]
                })
                .collect();
            print_rows(
                &[
                    "patientid",
                    "patientname",
                    "age",
                    "admitted_ward",
                    "phone_number",
                    "patientaddress",
                    "spo2_scale",
                ],
                &rows,
                format,
            )?;
        }
    }
    Ok(())
}

/// `vitalwatch thresholds …`
pub fn thresholds(cmd: ThresholdsCommand) -> anyhow::Result<()> {
    match cmd {
        ThresholdsCommand::Import { data, file } => {
            let cfg = load_config(&data)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bands = parse_threshold_csv(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let source = file.display().to_string();
            let _lock = lock_data_dir(&cfg.data_dir, "thresholds import")?;
            let mut cat = open_catalog(&cfg)?;
            let before = cat.thresholds()?.version;
            let v = cat.import_thresholds(&bands, &source, wall_now())?;
            if v == before {
                confirm(format_args!(
                    "{}: unchanged, still version {v} ({} bands)",
                    file.display(),
                    bands.len()
                ));
            } else {
                confirm(format_args!(
                    "imported {} bands from {} as version {v}",
                    bands.len(),
                    file.display()
                ));
            }
        }
        ThresholdsCommand::List {
            data,
            version,
            versions,
            format,
        } => {
            let cfg = load_config(&data)?;
            let cat = open_catalog_read(&cfg)?;
            if versions {
                let rows: Vec<Vec<String>> = cat
                    .threshold_versions()?
                    .into_iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            v.imported_at.to_string(),
                            v.bands.to_string(),
                            v.source,
                        ]
                    })
                    .collect();
                return print_rows(
                    &["version", "imported_at", "bands", "source"],
                    &rows,
                    format,
                );
            }
            let t = match version {
                Some(v) => {
                    let t = cat.thresholds_version(v)?;
                    if t.bands.is_empty() {
                        let known: Vec<String> = cat
                            .threshold_versions()?
                            .iter()
                            .map(|v| v.version.to_string())
                            .collect();
                        bail!(
                            "no threshold table version {v} (versions: {})",
                            if known.is_empty() {
                                "none yet".to_owned()
                            } else {
                                known.join(", ")
                            }
                        );
                    }
                    t
                }
                None => cat.thresholds()?,
            };
            if t.bands.is_empty() {
                eprintln!(
                    "no threshold bands loaded (version {}); import some with `vitalwatch thresholds import FILE.csv`",
                    t.version
                );
                return Ok(());
            }
            eprintln!("threshold table version {}", t.version);
            let rows: Vec<Vec<String>> = t
                .bands
                .iter()
                .map(|b| {
                    vec![
                        b.ref_id.to_string(),
                        b.attribute.clone(),
                        b.low_age_limit.to_string(),
                        b.high_age_limit.to_string(),
                        b.low_range_value.to_string(),
                        b.high_range_value.to_string(),
                        u8::from(b.alert_flag).to_string(),
                        b.alert_message.clone(),
                        b.priority.to_string(),
                        b.patient_id
                            .as_ref()
                            .map(|p| p.0.clone())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            let headers: Vec<&str> = THRESHOLD_COLUMNS
                .iter()
                .chain(&THRESHOLD_EXTRA_COLUMNS)
                .copied()
                .collect();
            print_rows(&headers, &rows, format)?;
        }
    }
    Ok(())
}

/// `vitalwatch alerts …`
pub fn alerts(cmd: AlertsCommand) -> anyhow::Result<()> {
    match cmd {
        AlertsCommand::List {
            data,
            all,
            limit,
            format,
        } => {
            let cfg = load_config(&data)?;
            let list = open_catalog_read(&cfg)?.alerts(!all, limit)?;
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|a| {
                    let e = a.latest;
                    vec![
                        e.alert_id,
                        e.state.as_str().into(),
                        e.priority.to_string(),
                        e.patient_id.0,
                        e.rule_key,
                        e.value.map(|v| v.to_string()).unwrap_or_default(),
                        e.episode_start.to_string(),
                        a.events.to_string(),
                        e.alert_message,
                    ]
                })
                .collect();
            print_rows(
                &[
                    "alert_id",
                    "state",
                    "priority",
                    "patient_id",
                    "rule",
                    "value",
                    "since",
                    "events",
                    "message",
                ],
                &rows,
                format,
            )
        }
    }
}

/// `vitalwatch config …`
pub fn config_cmd(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Default => emit(config::DEFAULT_CONFIG_TOML),
        ConfigCommand::Check { file } => {
            let cfg = config::load(&file)?;
            emit(&format!(
                "{}: ok (profile {}, data in {}, HTTP {}, simulator {})\n",
                file.display(),
                cfg.rules.profile.as_str(),
                cfg.data_dir.display(),
                if cfg.http.enabled {
                    cfg.http.listen.as_str()
                } else {
                    "off"
                },
                if cfg.simulator.enabled { "on" } else { "off" }
            ))?;
            Ok(())
        }
    }
}

/// `vitalwatch warehouse …`
pub fn warehouse_cmd(cmd: WarehouseCommand) -> anyhow::Result<()> {
    match cmd {
        WarehouseCommand::Ddl { data } => {
            let cfg = load_config(&data)?;
            let root = warehouse_root(&cfg.data_dir);
            let abs: PathBuf = std::path::absolute(&root).unwrap_or(root);
            emit(&warehouse::hive_ddl(&abs))
        }
    }
}
