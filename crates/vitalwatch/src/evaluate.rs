//! `vitalwatch evaluate`: alarm quality, measured. Runs a labelled stream (the simulator,
//! or a recorded canonical JSON-lines file with `annotation` labels) through the engine on
//! the stream's own clock, in process and as fast as the CPU allows, and prints what
//! `vitalwatch_core::evaluate` scores: episodes detected, time to the first alarm (from
//! onset and from the NEWS2 standard-of-care trigger), notifications and nuisance
//! notifications per patient-day, PPV, per priority; for one profile, classic and standard
//! side by side (`--compare`), or a sweep of the standard profile's main knobs.
//!
//! Nothing is written anywhere: no data directory, no catalog, no alert log. The profiles
//! run with their built-in threshold tables (or `--thresholds FILE`) and the config's
//! `[rules]` (or the defaults). Several engines on simulated input run on one thread per
//! core, each thread with its own simulator (same seed, same stream).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use vitalwatch_core::codec::decode_annotated;
use vitalwatch_core::engine::Engine;
use vitalwatch_core::evaluate::{Annotation, Delays, Evaluation, Report, ScoreConfig, Scorer};
use vitalwatch_core::model::{
    DeviceId, Duration, Observation, Patient, PatientId, Timestamp, VitalSet,
};
use vitalwatch_core::reference::{
    BuiltinTable, ThresholdTable, parse_patients_csv, parse_threshold_csv,
};
use vitalwatch_core::rules::{Profile, RulesConfig};
use vitalwatch_core::simulate::{Label, SimConfig, Simulator, demo_patients};

use crate::cli::ProfileArg;
use crate::config::{self, Config};

/// `vitalwatch evaluate`
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Config file (TOML): its `[rules]` and `time.lateness` are evaluated. Without it,
    /// the documented defaults.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Rule profile; overrides `rules.profile`.
    #[arg(long, value_enum, conflicts_with = "compare")]
    pub profile: Option<ProfileArg>,
    /// Classic and standard side by side, on the same stream.
    #[arg(long)]
    pub compare: bool,
    /// Simulated patients (1–5 are the classic patients). With `--input`: demo patients
    /// 1..=N are the patient list, unless `--patients-csv` gives one.
    #[arg(long, default_value_t = 200)]
    pub patients: usize,
    /// Simulated hours (fractions allowed: 0.5 is 30 minutes).
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Simulator seed: the same seed gives the same stream and the same scores.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Score a recording instead of the simulator: canonical JSON lines, each labelled in
    /// its `annotation` field (`deterioration:KIND`, `artifact`, or none); `-` reads
    /// standard input.
    #[arg(long, conflicts_with_all = ["hours", "seed"])]
    pub input: Option<PathBuf>,
    /// Patients of the recording (classic `patients_information` CSV layout): ages select
    /// threshold bands, `spo2_scale` the SpO2 rules.
    #[arg(long, requires = "input")]
    pub patients_csv: Option<PathBuf>,
    /// Threshold table (CSV) for every profile evaluated, instead of each profile's
    /// built-in table (`data/threshold_ref.csv` for classic, `data/standard_thresholds.csv`
    /// for standard).
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Sweep a knob of the standard profile: `KEY=V1,V2,…`, repeatable (every combination
    /// is evaluated). Keys: persistence, spo2_limit, spo2_persistence, news2_persistence,
    /// news2_tolerance, news2_clear_after, renotify_after.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,…", conflicts_with_all = ["compare", "profile"])]
    pub sweeps: Vec<String>,
    /// After an episode ends, re-notifications of its own alerts still count as inside it
    /// for this long.
    #[arg(long, default_value = "5m")]
    pub grace: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
}

/// Output of `evaluate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned table for people.
    Table,
    /// One JSON document (numbers as numbers).
    Json,
}

/// The knobs `--sweep` turns, with what each sets.
const SWEEP_KEYS: [(&str, &str); 7] = [
    ("persistence", "rules.thresholds.persistence"),
    ("spo2_limit", "`below` of the spo2_low limit rule"),
    ("spo2_persistence", "persistence of the SpO2 limit rules"),
    ("news2_persistence", "rules.news2.persistence"),
    ("news2_tolerance", "rules.news2.tolerance"),
    ("news2_clear_after", "rules.news2.clear_after"),
    ("renotify_after", "rules.renotify_after"),
];

/// One engine configuration to evaluate.
#[derive(Debug, Clone)]
struct Variant {
    profile: Profile,
    /// The swept settings, in `--sweep` order.
    settings: Vec<(String, String)>,
    rules: RulesConfig,
    table: ThresholdTable,
}

impl Variant {
    fn evaluation(&self, patients: &[Patient], grace: Duration, lateness: Duration) -> Evaluation {
        let engine = Engine::new(self.rules.clone(), patients.to_vec(), self.table.clone())
            .with_lateness(lateness);
        let scorer = Scorer::new(ScoreConfig { grace }, patients);
        Evaluation::new(engine, scorer, lateness)
    }
}

/// Sets one swept knob.
fn apply(rules: &mut RulesConfig, key: &str, value: &str) -> anyhow::Result<()> {
    let dur = || Duration::parse(value).with_context(|| format!("--sweep {key}={value}"));
    match key {
        "persistence" => rules.thresholds.persistence = dur()?,
        "news2_persistence" => rules.news2.persistence = dur()?,
        "news2_tolerance" => rules.news2.tolerance = dur()?,
        "news2_clear_after" => rules.news2.clear_after = dur()?,
        "renotify_after" => rules.renotify_after = dur()?,
        "spo2_persistence" => {
            let d = dur()?;
            let mut n = 0;
            for l in rules
                .limits
                .iter_mut()
                .filter(|l| l.name.starts_with("spo2_low"))
            {
                l.persistence = d;
                n += 1;
            }
            if n == 0 {
                bail!("--sweep spo2_persistence: no spo2_low limit rule in the configuration");
            }
        }
        "spo2_limit" => {
            let v: f64 = value
                .parse()
                .with_context(|| format!("--sweep spo2_limit={value}: not a number"))?;
            let Some(l) = rules.limits.iter_mut().find(|l| l.name == "spo2_low") else {
                bail!("--sweep spo2_limit: no spo2_low limit rule in the configuration");
            };
            l.below = Some(v);
        }
        _ => bail!(
            "--sweep {key}: unknown knob; known: {}",
            SWEEP_KEYS.map(|(k, _)| k).join(", ")
        ),
    }
    Ok(())
}

/// `KEY=V1,V2,…` into the key and its values.
fn parse_sweep(s: &str) -> anyhow::Result<(String, Vec<String>)> {
    let Some((k, vs)) = s.split_once('=') else {
        bail!("--sweep {s}: expected KEY=V1,V2,… (e.g. persistence=0s,10s)");
    };
    let values: Vec<String> = vs
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if values.is_empty() {
        bail!("--sweep {s}: no values");
    }
    Ok((k.trim().to_owned(), values))
}

/// Every combination of the swept values, each applied to `base`.
fn sweep_variants(
    base: &RulesConfig,
    table: &ThresholdTable,
    sweeps: &[String],
) -> anyhow::Result<Vec<Variant>> {
    let axes: Vec<(String, Vec<String>)> = sweeps
        .iter()
        .map(|s| parse_sweep(s))
        .collect::<anyhow::Result<_>>()?;
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    if combos.len() > 256 {
        bail!("--sweep: {} combinations; at most 256", combos.len());
    }
    combos
        .into_iter()
        .map(|settings| {
            let mut rules = base.clone();
            rules.profile = Profile::Standard;
            for (k, v) in &settings {
                apply(&mut rules, k, v)?;
            }
            let problems = rules.problems();
            if !problems.is_empty() {
                bail!("--sweep {settings:?}: {}", problems.join("; "));
            }
            Ok(Variant {
                profile: Profile::Standard,
                settings,
                rules,
                table: table.clone(),
            })
        })
        .collect()
}

fn read_table(path: &PathBuf) -> anyhow::Result<ThresholdTable> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bands =
        parse_threshold_csv(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(ThresholdTable { version: 1, bands })
}

fn builtin_table(profile: Profile) -> anyhow::Result<ThresholdTable> {
    let bands = parse_threshold_csv(BuiltinTable::of(profile).csv.as_bytes())?;
    Ok(ThresholdTable { version: 1, bands })
}

/// Where the labelled stream came from, for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Source {
    Simulator {
        patients: usize,
        hours: f64,
        seed: u64,
    },
    File {
        path: String,
        records: u64,
        /// Records that cannot be scored (undecodable, invalid, unknown annotation).
        skipped: u64,
        /// Observation sets the engine did not evaluate (later than `time.lateness`).
        late: u64,
    },
}

/// One evaluated configuration and its scores.
#[derive(Debug, Serialize)]
struct Outcome {
    profile: Profile,
    settings: std::collections::BTreeMap<String, String>,
    /// The swept knobs in `--sweep` order (the table's columns).
    #[serde(skip)]
    knobs: Vec<String>,
    #[serde(flatten)]
    report: Report,
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
struct Document<'a> {
    source: &'a Source,
    grace_s: f64,
    results: &'a [Outcome],
}

/// `vitalwatch evaluate`
pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    let grace = Duration::parse(&args.grace).context("bad --grace")?;
    if args.patients == 0 {
        bail!("--patients must be at least 1");
    }
    if !(args.hours.is_finite() && args.hours > 0.0) {
        bail!("--hours must be above 0");
    }
    let custom = args.thresholds.as_ref().map(read_table).transpose()?;
    let table_for = |p: Profile| match &custom {
        Some(t) => Ok(t.clone()),
        None => builtin_table(p),
    };
    let variant = |profile: Profile| -> anyhow::Result<Variant> {
        let mut rules = cfg.rules.clone();
        rules.profile = profile;
        Ok(Variant {
            profile,
            settings: Vec::new(),
            rules,
            table: table_for(profile)?,
        })
    };
    let variants: Vec<Variant> = if !args.sweeps.is_empty() {
        sweep_variants(&cfg.rules, &table_for(Profile::Standard)?, &args.sweeps)?
    } else if args.compare {
        vec![variant(Profile::Classic)?, variant(Profile::Standard)?]
    } else {
        vec![variant(args.profile.map_or(cfg.rules.profile, Into::into))?]
    };
    let lateness = cfg.time.lateness;

    let started = Instant::now();
    let (source, reports) = match &args.input {
        None => {
            let sim = SimConfig {
                patients: args.patients,
                seed: args.seed,
                ..SimConfig::default()
            };
            let count = (args.patients as f64 * args.hours * 3600.0)
                .round()
                .max(1.0) as u64;
            let reports = run_simulated(&sim, count, &variants, grace, lateness);
            let source = Source::Simulator {
                patients: args.patients,
                hours: args.hours,
                seed: args.seed,
            };
            (source, reports)
        }
        Some(path) => {
            let patients = match &args.patients_csv {
                Some(p) => {
                    let bytes =
                        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                    parse_patients_csv(&bytes)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                }
                None => demo_patients(args.patients),
            };
            run_input(path, &patients, &variants, grace, lateness)?
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let outcomes: Vec<Outcome> = variants
        .iter()
        .zip(reports)
        .map(|(v, report)| Outcome {
            profile: v.profile,
            settings: v.settings.iter().cloned().collect(),
            knobs: v.settings.iter().map(|(k, _)| k.clone()).collect(),
            report,
        })
        .collect();
    let sets: u64 = outcomes.first().map_or(0, |o| o.report.observation_sets);
    let readings: u64 = outcomes.first().map_or(0, |o| o.report.readings);
    let text = match args.format {
        ReportFormat::Json => {
            let doc = Document {
                source: &source,
                grace_s: grace.micros() as f64 / 1e6,
                results: &outcomes,
            };
            let mut s = serde_json::to_string_pretty(&doc)?;
            s.push('\n');
            s
        }
        ReportFormat::Table if args.sweeps.is_empty() => profiles_table(&source, grace, &outcomes),
        ReportFormat::Table => sweep_table(&source, grace, &outcomes),
    };
    crate::commands::emit(&text)?;
    let n = outcomes.len() as f64;
    eprintln!(
        "evaluated {} engine{} in {elapsed:.2}s: {:.2} M observation sets/s, {:.1} M readings/s{}",
        outcomes.len(),
        if outcomes.len() == 1 { "" } else { "s" },
        sets as f64 * n / elapsed / 1e6,
        readings as f64 * n / elapsed / 1e6,
        if outcomes.len() > 1 {
            " (all engines together)"
        } else {
            ""
        }
    );
    Ok(())
}

fn blank_observation() -> Observation {
    Observation {
        patient_id: PatientId(Default::default()),
        device_id: DeviceId(Default::default()),
        observed_at: Timestamp(0),
        ingested_at: Timestamp(0),
        vitals: VitalSet::default(),
    }
}

fn counting_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    crate::commands::progress_bar_styled(
        total,
        what,
        "{msg} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
    )
}

/// Progress is reported once per this many observation sets.
const PROGRESS_EVERY: u64 = 1 << 16;

/// Observation sets per batch handed from the simulator thread to the engine thread.
const BATCH: usize = 4096;

/// Runs every variant over `count` simulated observation sets. One engine on a machine
/// with two or more cores: the simulator on one thread, the engine and scorer on another
/// (the simulator is a third of the work). Several engines: one thread per core, each
/// with its own simulator and a share of the engines.
fn run_simulated(
    sim: &SimConfig,
    count: u64,
    variants: &[Variant],
    grace: Duration,
    lateness: Duration,
) -> Vec<Report> {
    let bar = counting_bar(count * variants.len() as u64, "evaluating");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let [only] = variants
        && cores >= 2
    {
        let report = run_pipelined(sim, count, only, grace, lateness, &bar);
        bar.finish_and_clear();
        return vec![report];
    }
    let threads = cores.min(variants.len()).max(1);
    let mut reports: Vec<Option<Report>> = vec![None; variants.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let bar = bar.clone();
                s.spawn(move || {
                    let mine: Vec<usize> = (k..variants.len()).step_by(threads).collect();
                    let mut simulator = Simulator::new(sim.clone());
                    let patients = simulator.patients().to_vec();
                    let mut evals: Vec<Evaluation> = mine
                        .iter()
                        .map(|&i| variants[i].evaluation(&patients, grace, lateness))
                        .collect();
                    let mut o = blank_observation();
                    for i in 0..count {
                        let label = simulator.next_into(&mut o).map(Annotation::of_label);
                        for e in evals.iter_mut() {
                            e.feed(&o, label);
                        }
                        if (i + 1) % PROGRESS_EVERY == 0 {
                            bar.inc(PROGRESS_EVERY * mine.len() as u64);
                        }
                    }
                    mine.into_iter()
                        .zip(evals.into_iter().map(Evaluation::finish))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panic in an evaluation thread is a bug; carry it to the caller.
            for (i, r) in h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                reports[i] = Some(r);
            }
        }
    });
    bar.finish_and_clear();
    reports.into_iter().flatten().collect()
}

/// One engine fed by a simulator on another thread, in batches whose buffers go back to
/// the simulator to be refilled (no allocation per observation).
fn run_pipelined(
    sim: &SimConfig,
    count: u64,
    variant: &Variant,
    grace: Duration,
    lateness: Duration,
    bar: &indicatif::ProgressBar,
) -> Report {
    type Batch = Vec<(Observation, Option<Label>)>;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Batch>(8);
    let mut simulator = Simulator::new(sim.clone());
    let patients = simulator.patients().to_vec();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut left = count;
            while left > 0 {
                let n = left.min(BATCH as u64) as usize;
                let mut batch = empty_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(BATCH));
                batch.resize_with(n, || (blank_observation(), None));
                for (o, label) in batch.iter_mut() {
                    *label = simulator.next_into(o);
                }
                left -= n as u64;
                if full_tx.send(batch).is_err() {
                    return;
                }
            }
        });
        let mut eval = variant.evaluation(&patients, grace, lateness);
        let mut done = 0u64;
        for batch in full_rx {
            for (o, label) in &batch {
                eval.feed(o, label.map(Annotation::of_label));
            }
            done += batch.len() as u64;
            if done >= PROGRESS_EVERY {
                bar.inc(std::mem::take(&mut done));
            }
            // The simulator may have finished: a buffer it no longer needs is dropped.
            let _ = empty_tx.try_send(batch);
        }
        eval.finish()
    })
}

/// Runs every variant over a labelled recording, line by line.
fn run_input(
    path: &std::path::Path,
    patients: &[Patient],
    variants: &[Variant],
    grace: Duration,
    lateness: Duration,
) -> anyhow::Result<(Source, Vec<Report>)> {
    let (input, name, size) = crate::commands::open_input(path)?;
    // Hidden for an empty (or unsized) input, and off a terminal.
    let bar = crate::commands::progress_bar(size, "evaluating");
    let mut evals: Vec<Evaluation> = variants
        .iter()
        .map(|v| v.evaluation(patients, grace, lateness))
        .collect();
    let mut input = input;
    let mut line = Vec::with_capacity(512);
    let (mut lineno, mut records, mut skipped) = (0u64, 0u64, 0u64);
    let mut first_problem: Option<String> = None;
    let mut unreported = 0u64;
    // A record without observed_at counts as observed at the recording's newest time.
    let mut newest = Timestamp(0);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {name}"))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        unreported += n as u64;
        if unreported >= 1 << 20 {
            bar.inc(std::mem::take(&mut unreported));
        }
        let rec = line.trim_ascii();
        if rec.is_empty() {
            continue;
        }
        records += 1;
        let decoded = decode_annotated(rec, newest)
            .map_err(|e| e.to_string())
            .and_then(|(o, a)| match a.as_deref().map(Annotation::parse) {
                Some(Err(e)) => Err(e.to_string()),
                _ => Ok((o, a)),
            });
        match decoded {
            Ok((o, a)) => {
                newest = newest.max(o.observed_at);
                let label = a
                    .as_deref()
                    .and_then(|t| Annotation::parse(t).ok().flatten());
                for e in evals.iter_mut() {
                    e.feed(&o, label);
                }
            }
            Err(why) => {
                skipped += 1;
                first_problem.get_or_insert_with(|| format!("line {lineno}: {why}"));
            }
        }
    }
    bar.finish_and_clear();
    if let Some(p) = &first_problem {
        eprintln!(
            "{name}: skipped {skipped} of {records} records that cannot be scored; first: {p}"
        );
    }
    if records == skipped {
        bail!("{name}: no record to evaluate");
    }
    // The engine does not evaluate a reading later than `time.lateness` (the scorer still
    // counts its label), nor one past a state bound: say how many.
    let (late, refused) = evals.first().map_or((0, 0), Evaluation::skipped);
    if late + refused > 0 {
        eprintln!(
            "{name}: the engine did not evaluate {late} observation sets later than time.lateness ({lateness}) and refused {refused} at a state bound"
        );
    }
    let source = Source::File {
        path: name,
        records,
        skipped,
        late,
    };
    Ok((source, evals.into_iter().map(Evaluation::finish).collect()))
}

// --- Tables for people --------------------------------------------------------------------

fn seconds(x: Option<f64>) -> String {
    match x {
        Some(s) => format!("{s:.0} s"),
        None => "-".into(),
    }
}

fn delays(d: &Delays) -> String {
    if d.n == 0 {
        return "-".into();
    }
    format!(
        "{} / {} / {}",
        seconds(d.median_s),
        seconds(d.p90_s),
        seconds(d.max_s)
    )
}

fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn percent(x: Option<f64>) -> String {
    match x {
        Some(p) => format!("{:.1} %", p * 100.0),
        None => "-".into(),
    }
}

fn header(source: &Source, grace: Duration, first: Option<&Report>) -> String {
    let what = match source {
        Source::Simulator {
            patients,
            hours,
            seed,
        } => format!("simulated ward, {patients} patients × {hours}h, seed {seed}"),
        Source::File {
            path,
            records,
            skipped,
            ..
        } => format!("{path}, {records} records ({skipped} skipped)"),
    };
    let (sets, readings, days) = first.map_or((0, 0, 0.0), |r| {
        (r.observation_sets, r.readings, r.patient_days)
    });
    format!(
        "{what}: {sets} observation sets ({readings} readings), {days:.1} patient-days\n\
         notifications: triggered, renotified, escalated, inputs_stale; nuisance: outside every episode (grace {grace} after one)\n\n"
    )
}

/// Left-aligned first column, right-aligned others.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut w = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One column per profile, one row per measure.
fn profiles_table(source: &Source, grace: Duration, outcomes: &[Outcome]) -> String {
    let reports: Vec<&Report> = outcomes.iter().map(|o| &o.report).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        let mut r = vec![name.to_owned()];
        r.extend(reports.iter().map(|x| f(x)));
        rows.push(r);
    };
    let mut head = vec![String::new()];
    head.extend(outcomes.iter().map(|o| o.profile.as_str().to_owned()));
    row("deterioration episodes", &|r| r.episodes.to_string());
    row("detected (sensitivity)", &|r| {
        format!("{} ({})", r.detected, percent(r.sensitivity))
    });
    let mut kinds: Vec<String> = reports
        .iter()
        .flat_map(|r| r.by_kind.iter().map(|k| k.kind.clone()))
        .collect();
    kinds.sort();
    kinds.dedup();
    for k in &kinds {
        row(&format!("  {k}"), &|r| {
            r.by_kind
                .iter()
                .find(|x| &x.kind == k)
                .map_or("-".into(), |x| format!("{}/{}", x.detected, x.episodes))
        });
    }
    row("time to first alarm: median / p90 / max", &|r| {
        delays(&r.time_to_alarm)
    });
    row("  after the standard-of-care trigger", &|r| {
        delays(&r.time_from_trigger)
    });
    row("  episodes with a trigger; alarm came first", &|r| {
        format!("{}; {}", r.episodes_with_trigger, r.alarm_before_trigger)
    });
    row("alerts per patient-day", &|r| {
        rate(r.total.alerts_per_patient_day)
    });
    row("notifications per patient-day", &|r| {
        rate(r.total.notifications_per_patient_day)
    });
    row("notifications per episode", &|r| {
        r.total
            .notifications_per_episode
            .map_or("-".into(), |x| format!("{x:.1}"))
    });
    row("nuisance notifications per patient-day", &|r| {
        rate(r.total.nuisance_per_patient_day)
    });
    row("  of which caused by artifacts", &|r| {
        rate(r.total.nuisance_from_artifacts_per_patient_day)
    });
    row("PPV (notifications inside episodes)", &|r| {
        percent(r.total.ppv)
    });
    for p in ["high", "medium", "low"] {
        let by = |r: &Report| {
            r.by_priority
                .iter()
                .find(|x| x.priority.as_str() == p)
                .cloned()
        };
        row(
            &format!("{p}: notifications / nuisance per patient-day"),
            &|r| {
                by(r).map_or("-".into(), |x| {
                    format!(
                        "{} / {}",
                        rate(x.counts.notifications_per_patient_day),
                        rate(x.counts.nuisance_per_patient_day)
                    )
                })
            },
        );
        row(&format!("{p}: PPV; episodes detected"), &|r| {
            by(r).map_or("-".into(), |x| {
                format!("{}; {}", percent(x.counts.ppv), x.episodes_detected)
            })
        });
    }
    let mut all = vec![head];
    all.extend(rows);
    let mut out = header(source, grace, reports.first().copied());
    out.push_str(&render(&all));
    if let [classic, standard] = reports.as_slice()
        && outcomes[0].profile == Profile::Classic
    {
        let (c, s) = (
            classic.total.nuisance_per_patient_day,
            standard.total.nuisance_per_patient_day,
        );
        if c > 0.0 {
            out.push_str(&format!(
                "\nstandard vs classic: {:.3} % fewer nuisance notifications, {:.3} % fewer notifications\n",
                (1.0 - s / c) * 100.0,
                (1.0 - standard.total.notifications_per_patient_day
                    / classic.total.notifications_per_patient_day.max(f64::MIN_POSITIVE))
                    * 100.0
            ));
        }
    }
    out
}

/// One row per swept combination.
fn sweep_table(source: &Source, grace: Duration, outcomes: &[Outcome]) -> String {
    let keys: Vec<String> = outcomes
        .first()
        .map(|o| o.knobs.clone())
        .unwrap_or_default();
    let mut head: Vec<String> = keys.clone();
    head.extend(
        [
            "detected",
            "to alarm (median)",
            "after trigger: median / p90",
            "notif/pd",
            "nuisance/pd",
            "PPV",
        ]
        .map(str::to_owned),
    );
    let mut rows = vec![head];
    for o in outcomes {
        let r = &o.report;
        let mut row: Vec<String> = keys
            .iter()
            .map(|k| o.settings.get(k).cloned().unwrap_or_default())
            .collect();
        row.push(format!("{}/{}", r.detected, r.episodes));
        row.push(seconds(r.time_to_alarm.median_s));
        row.push(format!(
            "{} / {}",
            seconds(r.time_from_trigger.median_s),
            seconds(r.time_from_trigger.p90_s)
        ));
        row.push(rate(r.total.notifications_per_patient_day));
        row.push(rate(r.total.nuisance_per_patient_day));
        row.push(percent(r.total.ppv));
        rows.push(row);
    }
    let mut out = header(source, grace, outcomes.first().map(|o| &o.report));
    out.push_str("standard profile, every combination of the swept settings:\n");
    out.push_str(&render(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_expand_to_every_combination_and_refuse_unknown_knobs() {
        let table = builtin_table(Profile::Standard).unwrap();
        let base = RulesConfig::default();
        let v = sweep_variants(
            &base,
            &table,
            &["persistence=0s,5s".into(), "spo2_limit=88,90".into()],
        )
        .unwrap();
        let settings: Vec<Vec<(String, String)>> = v.iter().map(|v| v.settings.clone()).collect();
        assert_eq!(settings.len(), 4);
        assert_eq!(
            settings[1],
            [
                ("persistence".into(), "0s".into()),
                ("spo2_limit".into(), "90".into())
            ]
        );
        assert_eq!(v[2].rules.thresholds.persistence, Duration::from_secs(5));
        let spo2 = v[0]
            .rules
            .limits
            .iter()
            .find(|l| l.name == "spo2_low")
            .unwrap();
        assert_eq!(spo2.below, Some(88.0));
        let err = sweep_variants(&base, &table, &["colour=red".into()]).unwrap_err();
        assert!(err.to_string().contains("unknown knob"), "{err}");
        assert!(sweep_variants(&base, &table, &["persistence".into()]).is_err());
        assert!(sweep_variants(&base, &table, &["persistence=ten".into()]).is_err());
        // Checked like a config file: a re-notify interval under 10 s is refused.
        assert!(sweep_variants(&base, &table, &["renotify_after=1s".into()]).is_err());
    }

    #[test]
    fn tables_align_columns() {
        let t = render(&[
            vec!["".into(), "classic".into()],
            vec!["a longer name".into(), "1".into()],
        ]);
        assert_eq!(t, "               classic\na longer name        1\n");
    }
}
