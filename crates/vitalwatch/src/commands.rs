//! What each subcommand does: loads config, opens what it needs, calls the libraries,
//! prints for people (stdout) and logs for operators (stderr).

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use vitalwatch_connectors::source::file::{FileSource, ReplayAdmission};
use vitalwatch_connectors::source::kafka::KafkaSettings;
use vitalwatch_connectors::source::simulator;
use vitalwatch_connectors::warehouse::{self, OutputFormat};
use vitalwatch_core::alert::{Priority, RuleKey};
use vitalwatch_core::codec::{InputFormat, encode_canonical, encode_classic};
use vitalwatch_core::model::{Duration, Observation, Timestamp, Vital};
use vitalwatch_core::reference::{
    BuiltinTable, THRESHOLD_COLUMNS, THRESHOLD_EXTRA_COLUMNS, parse_patients_csv,
    parse_threshold_csv,
};
use vitalwatch_core::simulate::{SimConfig, Simulator, demo_patients};

use crate::cli::{
    AlertsCommand, ConfigCommand, DataArgs, PatientsCommand, ReplayArgs, RunArgs, SimFormat,
    SimulateArgs, TableFormat, ThresholdsCommand, WarehouseCommand,
};
use crate::config::{self, Config, SimulatorConfig, SourceConfig};
use crate::http;
use crate::metrics::Metrics;
use crate::pipeline::{
    CatalogAt, Clock, Pipeline, PipelineHandle, PipelineOptions, Store, kafka_source, wall_now,
    warehouse_root,
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
    if let Some(s3) = cfg.warehouse.s3() {
        let w = warehouse::remote::ObjectWarehouse::s3(&s3)?;
        tracing::debug!(warehouse = %w.url(), "warehouse on object storage");
        warehouse::remote::install(w);
    }
    Ok(cfg)
}

/// On object storage: moves what the local spool holds to the bucket (after a one-shot
/// command wrote into the warehouse). Does nothing for a local warehouse.
pub(crate) fn upload_spool(cfg: &Config) -> anyhow::Result<()> {
    if let Some(r) = warehouse::remote::installed() {
        let root = warehouse_root(&cfg.data_dir);
        // `upload` drives its requests on a thread of its own: callable from anywhere.
        let done = r
            .upload(&root)
            .with_context(|| format!("cannot upload the warehouse to {}", r.url()))?;
        tracing::debug!(
            files = done.files,
            bytes = done.bytes,
            "uploaded to object storage"
        );
    }
    Ok(())
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

/// The catalog of an existing data directory (or the configured PostgreSQL one), for
/// reading.
fn open_catalog_read(cfg: &Config) -> anyhow::Result<Box<dyn Store>> {
    let at = CatalogAt::of(cfg);
    if let CatalogAt::Sqlite(p) = &at {
        existing_data_dir(cfg)?;
        if !p.is_file() {
            bail!(
                "no catalog in {}: nothing was imported, run or replayed there yet",
                cfg.data_dir.display()
            );
        }
    }
    at.open()
}

/// After an import into the catalog: writes what the catalog now holds to the warehouse's
/// `patients` table (no personal data), so reports can join readings to the age and ward
/// a patient had at the time. Returns the number of patients written.
pub(crate) fn snapshot_patients(
    cfg: &Config,
    store: &dyn Store,
    source: &str,
) -> anyhow::Result<usize> {
    let patients = store.patients()?;
    let mut sink =
        warehouse::ParquetSink::new(crate::pipeline::warehouse_config(cfg, &cfg.data_dir))
            .context("cannot open the warehouse for the patients snapshot")?;
    sink.write_patients(wall_now(), source, &patients)
        .and_then(|()| sink.close().map(drop))
        .context("cannot write the patients snapshot to the warehouse")?;
    upload_spool(cfg)?;
    Ok(patients.len())
}

pub(crate) fn open_catalog(cfg: &Config) -> anyhow::Result<Box<dyn Store>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    CatalogAt::of(cfg).open()
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
            .map(|p| p.patient_id.0.to_string())
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
        cfg.sources
            .retain(|s| !matches!(s, SourceConfig::Simulator(_)));
    }
    if let Some(n) = args.patients {
        for s in &mut cfg.sources {
            if let SourceConfig::Simulator(sim) = s {
                sim.patients = n;
            }
        }
    }
    let simulators: Vec<SimulatorConfig> = cfg
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::Simulator(sim) => Some(sim.clone()),
            _ => None,
        })
        .collect();
    let kafka_sources: Vec<KafkaSettings> = cfg
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::Kafka(k) => Some(k.clone()),
            _ => None,
        })
        .collect();
    let http_source = cfg
        .sources
        .iter()
        .any(|s| matches!(s, SourceConfig::Http(_)));
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
    let metrics = Arc::new(Metrics::default());
    // The catalog's blocking clients (PostgreSQL's runs its own runtime) stay off this
    // async task's thread.
    let (pipeline, kafka_readers) = off_runtime(|| {
        seed_reference(
            &cfg,
            simulators
                .iter()
                .map(|s| s.patients)
                .max()
                .unwrap_or(0)
                .max(args.demo_patients),
        )?;
        let pipeline = Pipeline::start(
            &cfg,
            PipelineOptions {
                clock: Clock::Wall,
                console: true,
                // A Kafka source's checkpoints decide which files a restart keeps: files
                // are published only at them, named after its stream.
                publish_at_checkpoints_only: !kafka_sources.is_empty(),
                reference_refresh: (cfg.pipeline.reference_refresh.micros() > 0)
                    .then(|| cfg.pipeline.reference_refresh.to_std()),
            },
            metrics.clone(),
        )?;
        let sources = kafka_sources
            .iter()
            .map(|k| kafka_source(&cfg, k.clone(), pipeline.handle().source))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::Ok((pipeline, sources))
    })?;
    let cancel = CancellationToken::new();

    let mut http_task = None;
    let mut listening = None;
    if let Some(listener) = listener {
        let (local, task) = http::serve_on(
            listener,
            pipeline.handle(),
            http_source.then_some(cfg.http.max_body_bytes),
            cancel.clone(),
        )?;
        listening = Some(local);
        http_task = Some(task);
    }
    let mut sim_threads = Vec::new();
    for sim in &simulators {
        let h = pipeline.handle();
        let c = cancel.clone();
        let sc = SimConfig {
            patients: sim.patients,
            seed: sim.seed,
            start: wall_now(),
            interval: sim.interval,
            ..SimConfig::default()
        };
        sim_threads.push(
            std::thread::Builder::new()
                .name("simulator".into())
                .spawn(move || simulate_live(sc, h, c))?,
        );
    }
    let mut kafka_threads = Vec::new();
    for (k, source) in kafka_sources.iter().zip(kafka_readers) {
        metrics.add_kafka(source.metrics());
        let c = cancel.clone();
        kafka_threads.push(
            std::thread::Builder::new()
                .name("kafka-source".into())
                .spawn(move || {
                    let r = source
                        .run(&|| c.is_cancelled())
                        .map_err(anyhow::Error::from);
                    if let Err(e) = &r {
                        // Said at once: a run whose source stopped ingests nothing.
                        tracing::error!("the kafka source stopped: {e:#}");
                    }
                    r
                })?,
        );
        eprintln!("reading {}", k.describe());
    }
    eprintln!(
        "vitalwatch ready in {:.0} ms: profile {}, {}, {}, data in {}",
        t0.elapsed().as_secs_f64() * 1e3,
        cfg.rules.profile.as_str(),
        match (listening, http_source) {
            (Some(a), true) => format!("HTTP on http://{a} (POST /v1/readings)"),
            (Some(a), false) => format!("HTTP on http://{a} (no http source)"),
            (None, _) => "HTTP off".into(),
        },
        match simulators.iter().map(|s| s.patients).sum::<usize>() {
            0 => "simulator off".to_owned(),
            n => format!("simulating {n} patients"),
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
    for t in sim_threads {
        let _ = t.join();
    }
    for t in kafka_threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("kafka source panicked"))?
            .context("kafka source")?;
    }
    let summary = tokio::task::spawn_blocking(move || pipeline.shutdown()).await??;
    eprintln!("{summary}");
    if let Some(m) = peak_rss_mib() {
        eprintln!("peak memory: {m:.1} MiB");
    }
    Ok(())
}

/// Runs blocking work on a thread of its own, outside any async runtime: the catalog's
/// clients block (PostgreSQL's drives a runtime of its own, which cannot start on a
/// thread that is already driving one).
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Feeds simulated observations in real time until cancelled.
fn simulate_live(config: SimConfig, h: PipelineHandle, cancel: CancellationToken) {
    simulator::run_live(config, &h.source, &|| cancel.is_cancelled());
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
            reference_refresh: None,
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
        let store = CatalogAt::of(&cfg).open_in_pipeline()?;
        let mut source = FileSource::new(
            h.source.clone(),
            store,
            warehouse_root(&cfg.data_dir),
            cfg.pipeline.checkpoint_interval.to_std(),
            args.from_start,
        );
        drop(h);
        std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn(move || -> anyhow::Result<Vec<String>> {
                // Each file is a recording with its own clock, so files given in any
                // order are judged by their own time; the engine still decides, per
                // device, what is late.
                let mut admission = ReplayAdmission::new(time);
                let mut notes = Vec::new();
                let progress = |n: u64| bar.inc(n);
                for f in &files {
                    notes.extend(source.replay_file(f, format, &progress, &mut admission)?);
                }
                source.finish()?;
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

/// One simulated observation as a record (canonical records carry the episode label).
fn encode_simulated(sim: &Simulator, o: &Observation, format: SimFormat, line: &mut String) {
    line.clear();
    match format {
        SimFormat::Classic => encode_classic(o, line),
        SimFormat::Canonical => {
            let label = sim
                .patient_index(&o.patient_id)
                .and_then(|idx| sim.label_at(idx, o.observed_at))
                .map(|l| l.to_string());
            encode_canonical(o, label.as_deref(), line);
        }
    }
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
    let start = match &args.start {
        Some(s) => Timestamp::parse(s).context("bad --start")?,
        None if args.kafka.is_some() => wall_now(),
        None => Timestamp::parse("2026-01-01T00:00:00Z").context("default start")?,
    };
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
    if let Some(brokers) = &args.kafka {
        let options = crate::produce::parse_options(&args.options)?;
        let mut out =
            crate::produce::KafkaOut::new(brokers, &args.topic, Some(args.rate), &options)?;
        let mut line = String::with_capacity(512);
        for _ in 0..count {
            let o = sim.next_observation();
            encode_simulated(&sim, &o, args.format, &mut line);
            out.send(Some(o.patient_id.as_str()), line.as_bytes())?;
        }
        confirm(out.finish()?);
        return Ok(());
    }
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
        encode_simulated(&sim, &o, args.format, &mut line);
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
pub async fn query(a: crate::cli::QueryArgs) -> anyhow::Result<()> {
    use crate::cli::QueryFormat;
    let cfg = load_config(&a.data)?;
    existing_data_dir(&cfg)?;
    if a.format == QueryFormat::Parquet && a.output.is_none() {
        bail!("--format parquet writes a file: add --output FILE.parquet");
    }
    let root = warehouse_root(&cfg.data_dir);
    let started = std::time::Instant::now();
    let batches = warehouse::query(&root, &a.sql)
        .await
        .context("query failed")?;
    if a.timing {
        eprintln!(
            "time: {:.3} s ({} rows)",
            started.elapsed().as_secs_f64(),
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        );
    }
    let text = match a.format {
        QueryFormat::Parquet => {
            let path = a.output.as_deref().expect("checked above");
            let rows = warehouse::write_parquet(&batches, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            confirm(format_args!("wrote {rows} rows to {}", path.display()));
            return Ok(());
        }
        QueryFormat::Table => warehouse::format_batches(&batches, OutputFormat::Table)?,
        QueryFormat::Csv => warehouse::format_batches(&batches, OutputFormat::Csv)?,
        QueryFormat::Json => warehouse::format_batches(&batches, OutputFormat::Json)?,
    };
    let text = if text.ends_with('\n') || text.is_empty() {
        text
    } else {
        text + "\n"
    };
    match &a.output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            confirm(format_args!(
                "wrote {} rows to {}",
                batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                path.display()
            ));
            Ok(())
        }
        None => emit(&text),
    }
}

/// `vitalwatch history`: one patient's readings, oldest first, with the alert events
/// of the same time span after them. The date predicate lets the query skip every day
/// partition outside the span.
pub async fn history(a: crate::cli::HistoryArgs) -> anyhow::Result<()> {
    let cfg = load_config(&a.data)?;
    existing_data_dir(&cfg)?;
    let instant = |s: &str| -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        Ok(chrono::DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("{s:?} is neither a duration (6h) nor an RFC 3339 instant"))?
            .to_utc())
    };
    let until = match &a.until {
        Some(u) => instant(u)?,
        None => chrono::Utc::now(),
    };
    let since = match Duration::parse(&a.since) {
        Ok(d) => until - chrono::Duration::microseconds(d.micros()),
        Err(_) => instant(&a.since)?,
    };
    let q = |s: &str| s.replace('\'', "''");
    let span = format!(
        "date BETWEEN DATE '{}' AND DATE '{}'",
        since.date_naive(),
        until.date_naive()
    );
    let (from, to) = (
        since.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
        until.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
    );
    let vital = a
        .vital
        .as_ref()
        .map(|v| format!(" AND vital = '{}'", q(v)))
        .unwrap_or_default();
    let sql = format!(
        "SELECT observed_at, vital, value, unit, device_id FROM vitals \
         WHERE patient_id = '{p}'{vital} AND {span} \
         AND observed_at >= TIMESTAMP '{from}' AND observed_at <= TIMESTAMP '{to}' \
         ORDER BY observed_at, vital",
        p = q(&a.patient)
    );
    let root = warehouse_root(&cfg.data_dir);
    let batches = warehouse::query(&root, &sql)
        .await
        .context("history query failed")?;
    emit(&warehouse::format_batches(
        &batches,
        output_format(a.format),
    )?)?;
    let alerts = format!(
        "SELECT alert_generated_time, event, priority, rule_key, alert_message, value FROM alerts \
         WHERE patient_id = '{p}'{vital} AND {span} \
         AND alert_generated_time >= TIMESTAMP '{from}' AND alert_generated_time <= TIMESTAMP '{to}' \
         ORDER BY alert_generated_time",
        p = q(&a.patient)
    );
    let events = warehouse::query(&root, &alerts)
        .await
        .context("history query failed")?;
    if events.iter().any(|b| b.num_rows() > 0) {
        if a.format == TableFormat::Table {
            emit("\nalert events:\n")?;
        }
        emit(&warehouse::format_batches(
            &events,
            output_format(a.format),
        )?)?;
    }
    if let Some(path) = &a.plot {
        let scores = format!(
            "SELECT observed_at, news2_score FROM scores WHERE patient_id = '{p}' AND {span} \
             AND observed_at >= TIMESTAMP '{from}' AND observed_at <= TIMESTAMP '{to}' \
             ORDER BY observed_at",
            p = q(&a.patient)
        );
        let scores = if a.vital.is_none() {
            warehouse::query(&root, &scores)
                .await
                .context("history query failed")?
        } else {
            Vec::new()
        };
        let patient = a.patient.clone();
        let bands = off_runtime(|| patient_bands(&cfg, &patient))?;
        let panels = trend_panels(&batches, &events, &scores, &bands)?;
        let (w, h) = crate::plot::render(
            path,
            &format!("patient {}", a.patient),
            since.timestamp_micros(),
            until.timestamp_micros(),
            &panels,
        )?;
        confirm(format_args!(
            "drew {} panel(s) into {} ({w}x{h})",
            panels.len(),
            path.display()
        ));
    }
    Ok(())
}

/// The patient's reference bands per vital (their age's, or their own overrides), and
/// NEWS2's response bands; none for a patient the catalog does not know.
fn patient_bands(
    cfg: &Config,
    patient: &str,
) -> anyhow::Result<Vec<(String, Vec<crate::plot::Band>)>> {
    use crate::plot::Band;
    let mut out = vec![(
        "news2".to_owned(),
        vec![
            Band {
                low: 0.0,
                high: 4.0,
                priority: None,
            },
            Band {
                low: 5.0,
                high: 6.0,
                priority: Some(Priority::Medium),
            },
            Band {
                low: 7.0,
                high: 20.0,
                priority: Some(Priority::High),
            },
        ],
    )];
    let Ok(cat) = open_catalog_read(cfg) else {
        return Ok(out);
    };
    let Some(p) = cat
        .patients()?
        .into_iter()
        .find(|p| p.patient_id.as_str() == patient)
    else {
        return Ok(out);
    };
    let table = cat.thresholds()?;
    for v in Vital::ALL {
        let bands = table.bands_for(v, &p.patient_id, p.age);
        if !bands.is_empty() {
            out.push((v.name().to_owned(), bands.iter().map(Band::of).collect()));
        }
    }
    Ok(out)
}

/// Panels for the trend chart from history's query results: one per vital read (in the
/// order of `Vital::ALL`), then NEWS2; each alert event goes to its vital's panel
/// (NEWS2's for NEWS2 alerts, the first panel otherwise).
fn trend_panels(
    readings: &[warehouse::RecordBatch],
    events: &[warehouse::RecordBatch],
    scores: &[warehouse::RecordBatch],
    bands: &[(String, Vec<crate::plot::Band>)],
) -> anyhow::Result<Vec<crate::plot::Panel>> {
    use crate::plot::{Event, Panel};
    use vitalwatch_connectors::warehouse::arrow::array::{
        AsArray, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray,
    };
    use vitalwatch_connectors::warehouse::arrow::datatypes::DataType;
    fn col<'a, T: 'static>(b: &'a warehouse::RecordBatch, name: &str) -> anyhow::Result<&'a T> {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .with_context(|| format!("history: column {name} has an unexpected type"))
    }
    // Text columns arrive as Utf8View or Utf8 depending on the reader: one cast each.
    fn strings(b: &warehouse::RecordBatch, name: &str) -> anyhow::Result<StringArray> {
        let c = b
            .column_by_name(name)
            .with_context(|| format!("history: no {name} column"))?;
        let c = vitalwatch_connectors::warehouse::arrow::compute::cast(c, &DataType::Utf8)?;
        Ok(c.as_string::<i32>().clone())
    }
    let mut panels: Vec<Panel> = Vec::new();
    let panel = |panels: &mut Vec<Panel>, name: &str, unit: &str| -> usize {
        if let Some(i) = panels.iter().position(|p| p.title == name) {
            return i;
        }
        panels.push(Panel {
            title: name.to_owned(),
            unit: unit.to_owned(),
            bands: bands
                .iter()
                .find(|(v, _)| v == name)
                .map(|(_, b)| b.clone())
                .unwrap_or_default(),
            ..Panel::default()
        });
        panels.len() - 1
    };
    for b in readings {
        let t = col::<TimestampMicrosecondArray>(b, "observed_at")?;
        let (vital, unit) = (strings(b, "vital")?, strings(b, "unit")?);
        let value = col::<Float64Array>(b, "value")?;
        for row in 0..b.num_rows() {
            let i = panel(&mut panels, vital.value(row), unit.value(row));
            panels[i].points.push((t.value(row), value.value(row)));
        }
    }
    for b in scores {
        let t = col::<TimestampMicrosecondArray>(b, "observed_at")?;
        let s = col::<Int32Array>(b, "news2_score")?;
        let i = panel(&mut panels, "news2", "points");
        for row in 0..b.num_rows() {
            panels[i]
                .points
                .push((t.value(row), f64::from(s.value(row))));
        }
    }
    // Sorted by vital as the engine knows them, NEWS2 last.
    let order = |title: &str| {
        Vital::ALL
            .iter()
            .position(|v| v.name() == title)
            .unwrap_or(Vital::ALL.len())
    };
    panels.sort_by_key(|p| order(&p.title));
    // A code that never changed and has no bands (consciousness A, room air all along)
    // is a flat line: left out, so the panels that move get the room.
    panels.retain(|p| !p.bands.is_empty() || p.points.windows(2).any(|w| w[0].1 != w[1].1));
    for b in events {
        let t = col::<TimestampMicrosecondArray>(b, "alert_generated_time")?;
        let kind = strings(b, "event")?;
        let prio = strings(b, "priority")?;
        let key = strings(b, "rule_key")?;
        for row in 0..b.num_rows() {
            let target = match key.value(row).parse::<RuleKey>() {
                Ok(RuleKey::Band { vital, .. }) => vital.name(),
                Ok(RuleKey::News2) => "news2",
                _ => "",
            };
            let Some(i) = panels
                .iter()
                .position(|p| p.title == target)
                .or(if panels.is_empty() { None } else { Some(0) })
            else {
                continue;
            };
            panels[i].events.push(Event {
                at: t.value(row),
                kind: kind.value(row).to_owned(),
                priority: Priority::parse(prio.value(row)).unwrap_or(Priority::Medium),
            });
        }
    }
    Ok(panels)
}

/// A day given as `YYYY-MM-DD` for option `what`, or today (UTC).
fn day_arg(day: Option<&str>, what: &str) -> anyhow::Result<chrono::NaiveDate> {
    match day {
        Some(d) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .with_context(|| format!("{what} {d}: expected YYYY-MM-DD")),
        None => Ok(chrono::Utc::now().date_naive()),
    }
}

/// The catalog's patient ids and wards, for `report` (an empty list without a catalog).
pub fn report_patients(c: &crate::cli::ReportCommand) -> anyhow::Result<Vec<(String, String)>> {
    let crate::cli::ReportCommand::Daily { data, .. } = c;
    let cfg = load_config(data)?;
    Ok(match open_catalog_read(&cfg) {
        Ok(cat) => cat
            .patients()?
            .into_iter()
            .map(|p| (p.patient_id.as_str().to_owned(), p.ward))
            .collect(),
        Err(_) => Vec::new(),
    })
}

/// `vitalwatch report daily`: three sections over one day partition, each a query.
pub async fn report(
    c: crate::cli::ReportCommand,
    patients: Vec<(String, String)>,
) -> anyhow::Result<()> {
    use vitalwatch_connectors::warehouse::arrow::array::StringArray;
    use vitalwatch_connectors::warehouse::arrow::datatypes::{DataType, Field, Schema};
    let crate::cli::ReportCommand::Daily { date, format, data } = c;
    let cfg = load_config(&data)?;
    existing_data_dir(&cfg)?;
    let day = day_arg(date.as_deref(), "--date")?;
    let ids: Vec<&str> = patients.iter().map(|(i, _)| i.as_str()).collect();
    let wards: Vec<&str> = patients.iter().map(|(_, w)| w.as_str()).collect();
    let catalog = warehouse::RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("patient_id", DataType::Utf8, false),
            Field::new("ward", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(wards)),
        ],
    )?;
    let sections = [
        (
            "alerts by ward and priority",
            format!(
                "SELECT coalesce(nullif(p.ward, ''), '(unknown)') AS ward, a.priority, count(*) AS alerts \
                 FROM alerts a LEFT JOIN catalog_patients p ON a.patient_id = p.patient_id \
                 WHERE a.date = DATE '{day}' AND a.event = 'triggered' GROUP BY 1, 2 ORDER BY 1, 2"
            ),
        ),
        (
            "time to acknowledge (seconds)",
            format!(
                "SELECT t.priority, count(*) AS acknowledged, \
                 median((arrow_cast(k.alert_generated_time, 'Int64') - arrow_cast(t.alert_generated_time, 'Int64')) / 1e6) AS median_seconds, \
                 max((arrow_cast(k.alert_generated_time, 'Int64') - arrow_cast(t.alert_generated_time, 'Int64')) / 1e6) AS max_seconds \
                 FROM alerts t JOIN alerts k ON t.alert_id = k.alert_id AND k.event = 'acknowledged' \
                 WHERE t.event = 'triggered' AND t.date = DATE '{day}' GROUP BY t.priority ORDER BY t.priority"
            ),
        ),
        (
            "dead letters by reason",
            format!(
                "SELECT split_part(reason, ':', 1) AS reason, count(*) AS dead_letters FROM dead_letters \
                 WHERE date = DATE '{day}' GROUP BY 1 ORDER BY 2 DESC, 1"
            ),
        ),
    ];
    let root = warehouse_root(&cfg.data_dir);
    let mut out = String::new();
    for (title, sql) in sections {
        let batches = warehouse::query_with(&root, &sql, &[("catalog_patients", catalog.clone())])
            .await
            .with_context(|| format!("report section {title:?} failed"))?;
        match format {
            TableFormat::Table => out.push_str(&format!("{title}, {day}:\n")),
            _ => out.push_str(&format!("# {title}, {day}\n")),
        }
        out.push_str(&warehouse::format_batches(&batches, output_format(format))?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    emit(&out)
}

/// Prints rows as a table, CSV or JSON lines.
/// Columns whose cells are numbers (JSON output writes them as numbers).
const NUMERIC_COLUMNS: &[&str] = &[
    "delivered_to",
    "first_seq",
    "last_seq",
    "attempt",
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
            let mut store = open_catalog(&cfg)?;
            let r = store.import_patients(&patients, &source, wall_now())?;
            snapshot_patients(&cfg, store.as_ref(), &source)?;
            confirm(format_args!(
                "{}: {} added, {} updated, {} unchanged, in {}",
                file.display(),
                r.added,
                r.updated.len(),
                r.unchanged,
                CatalogAt::of(&cfg).describe()
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
                        p.patient_id.0.to_string(),
                        p.name.clone(),
                        p.age.to_string(),
                        p.ward.clone(),
                        p.phone.clone(),
                        p.address.clone(),
                        p.spo2_scale.number().to_string(),
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
                            .map(|p| p.0.to_string())
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
                        e.alert_id.0,
                        e.state.as_str().into(),
                        e.priority.to_string(),
                        e.patient_id.0.to_string(),
                        e.rule_key.to_string(),
                        e.value.map(|v| v.to_string()).unwrap_or_default(),
                        e.episode_start.to_string(),
                        a.events.to_string(),
                        e.alert_message.to_string(),
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
        AlertsCommand::Show { id, data } => {
            let cfg = load_config(&data)?;
            let Some(e) = open_catalog_read(&cfg)?.alert(&id)? else {
                bail!("no alert {id} in the catalog (vitalwatch alerts list --all shows them)");
            };
            emit(&format!("{}\n", serde_json::to_string_pretty(&e)?))
        }
        AlertsCommand::Ack { id, by, url, data } => {
            let cfg = load_config(&data)?;
            let base = url.unwrap_or_else(|| format!("http://{}", cfg.http.listen));
            let target = format!("{}/v1/alerts/{id}/ack", base.trim_end_matches('/'));
            let body = serde_json::json!({ "by": by }).to_string();
            let resp = ureq::post(&target)
                .config()
                .http_status_as_error(false)
                .build()
                .header("content-type", "application/json")
                .send(body.as_bytes());
            let mut resp = resp.with_context(|| {
                format!("no vitalwatch run answers on {base}: acknowledging needs the running pipeline (pass --url)")
            })?;
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if status != 200 {
                let msg = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                bail!("{msg}");
            }
            println!("acknowledged alert {id} by {by}");
            Ok(())
        }
        AlertsCommand::Silence {
            patient,
            duration,
            by,
            reason,
            data,
        } => {
            let cfg = load_config(&data)?;
            std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
                format!("cannot create data directory {}", cfg.data_dir.display())
            })?;
            let s = silence(
                &CatalogAt::of(&cfg),
                &patient,
                duration,
                &by,
                &reason,
                "cli",
            )?;
            println!(
                "silenced patient {patient} until {} (silence {}); new or escalated high-priority alarms still go out",
                s.ends_at, s.id
            );
            Ok(())
        }
        AlertsCommand::Silences { data, all, format } => {
            let cfg = load_config(&data)?;
            let list = open_catalog_read(&cfg)?.silences((!all).then(wall_now))?;
            let rows: Vec<Vec<String>> = list
                .into_iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        s.patient_id,
                        s.starts_at.to_string(),
                        s.ends_at.to_string(),
                        s.by,
                        s.reason,
                    ]
                })
                .collect();
            print_rows(
                &["silence", "patient_id", "from", "until", "by", "reason"],
                &rows,
                format,
            )
        }
        AlertsCommand::Deliveries {
            data,
            notifier,
            limit,
            format,
        } => {
            let cfg = load_config(&data)?;
            let store = open_catalog_read(&cfg)?;
            let names: Vec<String> = match notifier {
                Some(n) => vec![n],
                None => ["warehouse", "jsonl", "console"].map(String::from).to_vec(),
            };
            let mut rows = Vec::new();
            for name in &names {
                let cursor = store.cursor(name)?;
                for a in store.deliveries(name, limit)? {
                    rows.push(vec![
                        name.clone(),
                        cursor.to_string(),
                        a.first_seq.to_string(),
                        a.last_seq.to_string(),
                        a.attempt.to_string(),
                        a.at.to_string(),
                        a.outcome.as_str().to_owned(),
                        a.error.unwrap_or_default(),
                    ]);
                }
            }
            print_rows(
                &[
                    "notifier",
                    "delivered_to",
                    "first_seq",
                    "last_seq",
                    "attempt",
                    "at",
                    "outcome",
                    "error",
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
                "{}: ok (profile {}, data in {}, HTTP {}, sources {}{})\n",
                file.display(),
                cfg.rules.profile.as_str(),
                cfg.data_dir.display(),
                if cfg.http.enabled {
                    cfg.http.listen.as_str()
                } else {
                    "off"
                },
                match cfg.sources.len() {
                    0 => "none".to_owned(),
                    _ => cfg
                        .sources
                        .iter()
                        .map(SourceConfig::kind)
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                match cfg.notifiers.len() {
                    0 => String::new(),
                    _ => format!(
                        ", notifiers {}",
                        cfg.notifiers
                            .iter()
                            .map(config::NotifierConfig::kind)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            ))?;
            Ok(())
        }
    }
}

/// `vitalwatch warehouse …`
pub fn warehouse_cmd(cmd: WarehouseCommand) -> anyhow::Result<()> {
    match cmd {
        WarehouseCommand::Schema => emit(&warehouse::schema_markdown()),
        WarehouseCommand::Ddl { engine, data } => {
            let cfg = load_config(&data)?;
            let root = warehouse_root(&cfg.data_dir);
            let abs: PathBuf = std::path::absolute(&root).unwrap_or(root);
            let engine = match engine {
                crate::cli::DdlEngineArg::Hive => warehouse::DdlEngine::Hive,
                crate::cli::DdlEngineArg::Spark => warehouse::DdlEngine::Spark,
                crate::cli::DdlEngineArg::Duckdb => warehouse::DdlEngine::DuckDb,
            };
            emit(&warehouse::ddl(&abs, engine))
        }
        WarehouseCommand::Compact {
            before,
            scope:
                crate::cli::PartitionScope {
                    table,
                    dry_run,
                    data,
                },
        } => {
            let cfg = load_config(&data)?;
            existing_data_dir(&cfg)?;
            let before = day_arg(before.as_deref(), "--before")?;
            let started = std::time::Instant::now();
            let r = warehouse::compact(
                &warehouse_root(&cfg.data_dir),
                before,
                table.as_deref(),
                dry_run,
            )?;
            let secs = started.elapsed().as_secs_f64();
            confirm(format_args!(
                "{} {} hour partition(s) before {before}: {} files into {}{}",
                if dry_run { "would merge" } else { "merged" },
                r.partitions,
                r.files_in,
                r.partitions,
                if dry_run {
                    String::new()
                } else {
                    format!(
                        ", {} rows in {secs:.1} s ({:.0} rows/s)",
                        r.rows,
                        r.rows as f64 / secs.max(1e-9)
                    )
                }
            ));
            Ok(())
        }
        WarehouseCommand::Retain {
            older_than,
            scope:
                crate::cli::PartitionScope {
                    table,
                    dry_run,
                    data,
                },
        } => {
            let cfg = load_config(&data)?;
            existing_data_dir(&cfg)?;
            let keep = parse_duration(&older_than, "--older-than")?;
            if keep.micros() < 86_400_000_000 {
                bail!("--older-than {older_than}: retention is in whole days (at least 1d)");
            }
            let cutoff =
                (chrono::Utc::now() - chrono::Duration::microseconds(keep.micros())).date_naive();
            let r = warehouse::retain(
                &warehouse_root(&cfg.data_dir),
                cutoff,
                table.as_deref(),
                dry_run,
            )?;
            for (t, d) in &r.partitions {
                emit(&format!("{t}/date={d}\n"))?;
            }
            confirm(format_args!(
                "{} {} day partition(s) before {cutoff} ({} files, {:.1} MB){}",
                if dry_run { "would remove" } else { "removed" },
                r.partitions.len(),
                r.files,
                r.bytes as f64 / 1e6,
                table.map(|t| format!(" from {t}")).unwrap_or_default()
            ));
            Ok(())
        }
    }
}

/// `vitalwatch notify test NAME`: one test message through a configured notifier.
pub fn notify(c: crate::cli::NotifyCommand) -> anyhow::Result<()> {
    let crate::cli::NotifyCommand::Test { notifier, data } = c;
    let cfg = load_config(&data)?;
    let Some(n) = cfg.notifiers.iter().find(|n| n.name() == notifier) else {
        let names: Vec<&str> = cfg.notifiers.iter().map(|n| n.name()).collect();
        bail!(
            "no notifier named {notifier:?} in the configuration (configured: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let mut out = crate::pipeline::external_notifier(n)?;
    let event = vitalwatch_connectors::notify::test_event(wall_now());
    let text = serde_json::to_string(&event)?;
    let item = vitalwatch_connectors::notify::OutboxItem::new(0, event, text);
    let answer = out.send_test(&item).with_context(|| {
        format!(
            "notifier {notifier} ({}): the test message was not sent",
            n.kind()
        )
    })?;
    println!("{notifier}: sent; the server answered: {answer}");
    Ok(())
}

/// Stores a silence for `patient` lasting `duration` from now, with its audit row
/// (`from`: where the request came from).
pub fn silence(
    at: &CatalogAt,
    patient: &str,
    duration: Duration,
    by: &str,
    reason: &str,
    from: &str,
) -> anyhow::Result<vitalwatch_connectors::store::Silence> {
    if by.trim().is_empty() || reason.trim().is_empty() {
        bail!("a silence needs who sets it (by) and why (reason)");
    }
    if duration <= Duration::ZERO || duration > Duration::from_secs(24 * 3600) {
        bail!("a silence lasts more than 0s and at most 24h (asked: {duration})");
    }
    let now = wall_now();
    let mut s = vitalwatch_connectors::store::Silence {
        id: 0,
        patient_id: patient.to_owned(),
        starts_at: now,
        ends_at: now.plus(duration),
        by: by.to_owned(),
        reason: reason.to_owned(),
    };
    let audit = vitalwatch_connectors::store::AuditEntry {
        at: now,
        actor: by.to_owned(),
        action: "patient silenced".into(),
        subject: patient.to_owned(),
        detail: format!("for {duration} ({reason}) via {from}"),
    };
    s.id = at.open()?.add_silence(&s, &audit)?;
    Ok(s)
}

/// `vitalwatch audit list`.
pub fn audit(c: crate::cli::AuditCommand) -> anyhow::Result<()> {
    let crate::cli::AuditCommand::List {
        data,
        limit,
        format,
    } = c;
    let cfg = load_config(&data)?;
    let rows: Vec<Vec<String>> = open_catalog_read(&cfg)?
        .audit_log(limit)?
        .into_iter()
        .map(|a| vec![a.at.to_string(), a.actor, a.action, a.subject, a.detail])
        .collect();
    print_rows(&["at", "who", "action", "subject", "detail"], &rows, format)
}
