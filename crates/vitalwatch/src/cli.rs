//! The command line: one subcommand per user task, each a thin layer over the libraries.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vitalwatch_core::codec::InputFormat;
use vitalwatch_core::rules::Profile;

/// Real-time patient-vitals alerting: ingest, evaluate, alert, archive.
///
/// Exit status: 0 success, 1 error, 2 usage error (unknown command or option, bad value).
#[derive(Debug, Parser)]
#[command(name = "vitalwatch", version, about)]
pub struct Cli {
    /// No confirmation lines from commands that write (errors still print).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the live pipeline: simulator and HTTP ingest → engine → alerts + warehouse.
    Run(RunArgs),
    /// Push JSON-lines files through the pipeline as fast as possible, then summarise.
    Replay(ReplayArgs),
    /// Write simulated vitals as JSON lines, or send them to a Kafka topic in real time.
    Simulate(SimulateArgs),
    /// Send JSON-lines files to a Kafka topic, keyed by patient id (the classic producer).
    Produce(crate::produce::ProduceArgs),
    /// Run SQL over the warehouse (tables vitals, alerts, dead_letters, unclassified, audit,
    /// and tables imported with `import --to warehouse:NAME`).
    Query(QueryArgs),
    /// Import a database table or query (MariaDB/MySQL, PostgreSQL) into the catalog's
    /// patients, a warehouse table or a CSV/Parquet file; incremental like Sqoop.
    Import(crate::transfer::ImportArgs),
    /// Export a warehouse table into a database table (insert or upsert, all or nothing).
    Export(crate::transfer::ExportArgs),
    /// Saved import jobs that remember their last value.
    #[command(subcommand)]
    Transfer(crate::transfer::TransferCommand),
    /// A patient's readings over time (from the warehouse), with the alerts among them.
    History(HistoryArgs),
    /// Reports over the warehouse.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Patients in the catalog.
    #[command(subcommand)]
    Patients(PatientsCommand),
    /// Threshold bands in the catalog.
    #[command(subcommand)]
    Thresholds(ThresholdsCommand),
    /// Alerts recorded in the catalog.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The audit trail: imports, acknowledgements, silences (who, when, from where).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The configured notifiers (`[[notifiers]]`).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// The warehouse layout.
    #[command(subcommand)]
    Warehouse(WarehouseCommand),
    /// Measure speed: the rules engine, or HTTP ingest-to-alert latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Measure alarm quality on labelled episodes: detection, delay, nuisance alarms.
    Evaluate(crate::evaluate::EvaluateArgs),
}

/// Options shared by commands that use a data directory.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Config file (TOML). Without it, the documented defaults apply.
    #[arg(long, short = 'c', env = "VITALWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (catalog, warehouse, alert log); overrides `data_dir`.
    #[arg(long, env = "VITALWATCH_DATA")]
    pub data: Option<PathBuf>,
}

/// Rule profile on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    /// The classic design's alerts, one for one.
    Classic,
    /// Persistence, hysteresis, dedup, NEWS2, limits, stale devices.
    Standard,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Classic => Profile::Classic,
            ProfileArg::Standard => Profile::Standard,
        }
    }
}

/// Input format on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Per record: `customerId` means classic.
    Auto,
    /// `{"customerId":1,"heartBeat":74,"bp":202}`.
    Classic,
    /// `{"patient_id":…,"vitals":{…}}`.
    Canonical,
}

impl From<FormatArg> for InputFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Auto => InputFormat::Auto,
            FormatArg::Classic => InputFormat::Classic,
            FormatArg::Canonical => InputFormat::Canonical,
        }
    }
}

/// `vitalwatch run`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Rule profile; overrides `rules.profile`.
    #[arg(long, value_enum)]
    pub profile: Option<ProfileArg>,
    /// HTTP listen address; overrides `http.listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Do not start the built-in simulator.
    #[arg(long)]
    pub no_simulator: bool,
    /// Simulated patients; overrides `simulator.patients`.
    #[arg(long)]
    pub patients: Option<usize>,
    /// Stop by itself after this long (e.g. `30s`), as if Ctrl-C were pressed.
    #[arg(long)]
    pub duration: Option<String>,
    /// Make sure demo patients 1..=N exist in the catalog first (for readings from
    /// `simulate --kafka` or other sources; the simulator adds its own).
    #[arg(long, default_value_t = 0)]
    pub demo_patients: usize,
}

/// `vitalwatch replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Record format.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// Rule profile; overrides `rules.profile`.
    #[arg(long, value_enum)]
    pub profile: Option<ProfileArg>,
    /// Make sure demo patients 1..=N exist in the catalog first (1–5 are the classic
    /// patients), so simulated files replay against known patients. 0: leave it alone.
    #[arg(long, default_value_t = 24)]
    pub demo_patients: usize,
    /// Print each alert on the console too (default: summary only).
    #[arg(long)]
    pub print_alerts: bool,
    /// Replay files from their first byte even if an earlier replay of the same file got
    /// further: the rows that replay archived are replaced, alerts it recorded are not
    /// raised again. (Without it, a file continues where its last durable checkpoint
    /// ended, so a crashed or repeated replay archives nothing twice.)
    #[arg(long)]
    pub from_start: bool,
    /// JSON-lines files; `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Output format of `simulate`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SimFormat {
    /// Classic records (heart rate and systolic pressure only).
    Classic,
    /// Canonical records with all vitals and an episode/artifact annotation.
    Canonical,
}

/// `vitalwatch simulate`
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Patients (1–5 are the classic patients).
    #[arg(long, default_value_t = 24)]
    pub patients: usize,
    /// Observation sets per second, over all patients.
    #[arg(long, default_value_t = 24.0)]
    pub rate: f64,
    /// Simulated time to cover (e.g. `10m`, `2h`).
    #[arg(long, default_value = "1m")]
    pub duration: String,
    /// Seed: the same seed gives the same output.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Record format.
    #[arg(long, value_enum, default_value = "canonical")]
    pub format: SimFormat,
    /// Output file, or `-` for standard output.
    #[arg(long, short = 'o', default_value = "-")]
    pub output: PathBuf,
    /// Simulated start time (RFC 3339); default 2026-01-01T00:00:00Z, or now with
    /// `--kafka`.
    #[arg(long)]
    pub start: Option<String>,
    /// Send to Kafka instead (bootstrap brokers, `HOST:PORT,…`), paced in real time at
    /// `--rate` for `--duration`, keyed by patient id.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Topic for `--kafka`.
    #[arg(long, default_value = "vitals", requires = "kafka")]
    pub topic: String,
    /// A librdkafka producer setting for `--kafka`, `KEY=VALUE` (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE", requires = "kafka")]
    pub options: Vec<String>,
}

/// Output format of `query` and the list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    /// Aligned table for people.
    Table,
    /// CSV with a header.
    Csv,
    /// JSON lines, one object per row.
    Json,
}

/// `vitalwatch query`
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Output format (parquet needs --output).
    #[arg(long, value_enum, default_value = "table")]
    pub format: QueryFormat,
    /// Write the result to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print how long the query took (planning, reading, computing; not the process's
    /// start-up or the printing) on standard error.
    #[arg(long)]
    pub timing: bool,
    /// The SQL statement.
    pub sql: String,
}

/// `query --format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    /// Aligned table for people.
    Table,
    /// CSV with a header.
    Csv,
    /// JSON lines, one object per row.
    Json,
    /// A Parquet file (with --output).
    Parquet,
}

/// `vitalwatch patients …`
#[derive(Debug, Subcommand)]
pub enum PatientsCommand {
    /// Import patients from CSV (classic `patients_information` columns).
    Import {
        #[command(flatten)]
        data: DataArgs,
        /// The CSV file.
        file: PathBuf,
    },
    /// List patients.
    List {
        #[command(flatten)]
        data: DataArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// `vitalwatch thresholds …`
#[derive(Debug, Subcommand)]
pub enum ThresholdsCommand {
    /// Import threshold bands from CSV (classic `threshold_ref` columns) as a new version.
    Import {
        #[command(flatten)]
        data: DataArgs,
        /// The CSV file.
        file: PathBuf,
    },
    /// List the bands of the current version (or of `--version N`).
    List {
        #[command(flatten)]
        data: DataArgs,
        /// Show this version instead of the current one.
        #[arg(long)]
        version: Option<u32>,
        /// List the stored versions instead of bands.
        #[arg(long)]
        versions: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// `vitalwatch alerts …`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first (open ones unless `--all`).
    List {
        #[command(flatten)]
        data: DataArgs,
        /// Include resolved alerts.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// One alert: its latest event, as JSON (the alert-log line, classic fields included).
    Show {
        /// The alert's id.
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Acknowledge an open alert in the running `vitalwatch run` (its HTTP API): its
    /// re-notifications and escalation stop; it resolves when its condition clears.
    Ack {
        /// The alert's id (`vitalwatch alerts list`).
        id: String,
        /// Who acknowledges (recorded in the audit trail).
        #[arg(long)]
        by: String,
        /// The running instance; default: `http://` + the config's `http.listen`.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Hold back a patient's notifications for a while (never a new or escalated
    /// high-priority alarm). Stored in the catalog: every running replica honours it.
    Silence {
        /// The patient.
        #[arg(long)]
        patient: String,
        /// How long (`10m`, `1h`; at most 24h).
        #[arg(long = "for")]
        #[arg(value_parser = |s: &str| vitalwatch_core::model::Duration::parse(s).map_err(|e| e.to_string()))]
        duration: vitalwatch_core::model::Duration,
        /// Who sets it (recorded in the audit trail).
        #[arg(long)]
        by: String,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Silences, newest first (those in force unless `--all`).
    Silences {
        #[command(flatten)]
        data: DataArgs,
        /// Include ended silences.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
    /// Delivery attempts of the notifiers (alert log, console, warehouse), newest first,
    /// with how far each notifier got in the outbox.
    Deliveries {
        #[command(flatten)]
        data: DataArgs,
        /// Only this notifier (`jsonl`, `console`, `warehouse`).
        #[arg(long)]
        notifier: Option<String>,
        /// At most this many attempts per notifier.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// `vitalwatch config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
    /// Validate a configuration file and list every problem.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `vitalwatch audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The audit trail, newest first.
    List {
        #[command(flatten)]
        data: DataArgs,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
    },
}

/// `vitalwatch notify …`
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message through a configured notifier and print what the server
    /// answered (nothing is recorded in the outbox).
    Test {
        /// The notifier's `name` in the config file.
        notifier: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// `vitalwatch warehouse …`
#[derive(Debug, Subcommand)]
pub enum WarehouseCommand {
    /// Print every table's columns (type, unit, meaning) as Markdown.
    Schema,
    /// Print the statements that make Hive, Spark SQL or DuckDB read the warehouse in place.
    Ddl {
        /// Which engine.
        #[arg(long, value_enum, default_value = "hive")]
        engine: DdlEngineArg,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Merge each finished hour's small files into one (every table, or one); readers
    /// never see a row twice or miss one.
    Compact {
        /// Only days before this one (YYYY-MM-DD) [default: today, UTC: every finished day].
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        scope: PartitionScope,
    },
    /// Drop whole days older than a retention period (every table, or one).
    Retain {
        /// Keep this much: days before today (UTC) minus it go, e.g. 90d.
        #[arg(long)]
        older_than: String,
        #[command(flatten)]
        scope: PartitionScope,
    },
}

/// Which partitions `warehouse compact` and `retain` touch, and whether they only say so.
#[derive(Debug, Args)]
pub struct PartitionScope {
    /// Only this table.
    #[arg(long)]
    pub table: Option<String>,
    /// Say what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// `warehouse ddl --engine`
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DdlEngineArg {
    /// Apache Hive: CREATE EXTERNAL TABLE … PARTITIONED BY … STORED AS PARQUET, MSCK REPAIR.
    Hive,
    /// Spark SQL: CREATE TABLE … USING PARQUET PARTITIONED BY …, MSCK REPAIR.
    Spark,
    /// DuckDB: views over read_parquet with Hive partitioning.
    Duckdb,
}

/// `vitalwatch report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// One day: alerts per ward and priority, time to acknowledge, dead letters by reason.
    Daily {
        /// The day (UTC), YYYY-MM-DD [default: today].
        #[arg(long)]
        date: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// `vitalwatch history`
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The patient.
    #[arg(long)]
    pub patient: String,
    /// Only this vital (heart_rate, systolic, spo2, …).
    #[arg(long)]
    pub vital: Option<String>,
    /// From this long ago (e.g. 6h, 2d) or this instant (RFC 3339).
    #[arg(long, default_value = "6h")]
    pub since: String,
    /// Up to this instant (RFC 3339) [default: now].
    #[arg(long)]
    pub until: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableFormat,
    /// Also draw the trend into this file (.svg or .png): each vital over time with the
    /// patient's threshold bands shaded and alert events marked, plus NEWS2 when scored.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<std::path::PathBuf>,
}

/// `vitalwatch bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Rules engine throughput on one core (readings/s), standard and classic profiles.
    Engine {
        /// Patients.
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        /// Readings to process per profile.
        #[arg(long, default_value_t = 8_000_000)]
        readings: u64,
    },
    /// HTTP ingest-to-alert latency at a steady rate, through the whole pipeline.
    Http {
        /// Readings per second.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// How long to send (e.g. `10s`).
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Keep the run's data directory here (catalog, alerts.jsonl, warehouse) to
        /// inspect it afterwards; by default a temporary one is removed.
        #[arg(long)]
        keep_data: Option<PathBuf>,
        /// Run the `[[notifiers]]` of this config file beside the alert path (the outbox's
        /// cost on ingest-to-alert latency).
        #[arg(long)]
        notifiers_from: Option<PathBuf>,
    },
    /// A notifier against its server: deliveries/s back to back, then delivery latency
    /// at a steady rate (delivered as a notifier lane does: up to its batch size per call, whatever is due).
    Notify {
        /// The notifier's `name` in the config file.
        notifier: String,
        /// Config file with the `[[notifiers]]` item.
        #[arg(long, short = 'c', env = "VITALWATCH_CONFIG")]
        config: PathBuf,
        /// Alert events for each of the two runs.
        #[arg(long, default_value_t = 500)]
        alerts: usize,
        /// Alert events per second for the latency run.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
    /// Kafka: records/s one replica sustains vs a bare consumer on the same topic, then
    /// produce-to-alert latency at a steady rate (needs a broker).
    Kafka {
        /// Bootstrap brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Records for the throughput run.
        #[arg(long, default_value_t = 500_000)]
        records: u64,
        /// Partitions of the benchmark topics.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Records per second for the latency run.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// How long the latency run produces (e.g. `10s`).
        #[arg(long, default_value = "10s")]
        duration: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks argument definitions only when a subcommand is parsed; check them all.
    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
