//! The configuration file: one TOML document, every field documented and defaulted.
//!
//! `vitalwatch config default` prints [`DEFAULT_CONFIG_TOML`], the documented defaults;
//! a test keeps it equal to [`Config::default`], so the docs cannot drift from the code.
//! [`load`] validates a file and reports every problem at once: unknown keys (all of
//! them, not just the first), type errors, and semantic checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitalwatch_connectors::notify::kafka::KafkaNotifierSettings;
use vitalwatch_connectors::notify::smtp::SmtpSettings;
use vitalwatch_connectors::notify::sns::SnsSettings;
use vitalwatch_connectors::notify::webhook::WebhookSettings;
use vitalwatch_connectors::source::kafka::KafkaSettings;
use vitalwatch_core::clock::TimeConfig;
use vitalwatch_core::model::Duration;
use vitalwatch_core::rules::RulesConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the catalog, the warehouse and the alert log live.
    pub data_dir: PathBuf,
    /// The catalog (patients, thresholds, alert state, outbox, source positions): empty
    /// for SQLite in the data directory, or a PostgreSQL URL to share it between replicas.
    pub catalog: String,
    /// Event-time limits: future and old readings, out-of-order tolerance.
    pub time: TimeConfig,
    /// Clinical rules.
    pub rules: RulesConfig,
    /// Where readings come from: one `[[sources]]` item per source, each with a `type`.
    pub sources: Vec<SourceConfig>,
    /// The HTTP server: health, metrics, the alert API, and the `http` source.
    pub http: HttpConfig,
    /// Alert outputs.
    pub alerts: AlertsConfig,
    /// More alert destinations: one `[[notifiers]]` item each, with a `type`.
    pub notifiers: Vec<NotifierConfig>,
    /// Which alert events reach which notifier, with escalation tiers: one `[[routes]]`
    /// item each. None: every notifier gets every event.
    pub routes: Vec<crate::routing::RouteConfig>,
    /// Parquet warehouse.
    pub warehouse: WarehouseSection,
    /// Internal channels.
    pub pipeline: PipelineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./vitalwatch-data"),
            catalog: String::new(),
            time: TimeConfig::default(),
            rules: RulesConfig::default(),
            sources: vec![
                SourceConfig::Http(HttpSourceConfig::default()),
                SourceConfig::Simulator(SimulatorConfig::default()),
            ],
            http: HttpConfig::default(),
            alerts: AlertsConfig::default(),
            notifiers: Vec::new(),
            routes: Vec::new(),
            warehouse: WarehouseSection::default(),
            pipeline: PipelineConfig::default(),
        }
    }
}

/// One `[[sources]]` item: its `type` says which source, the other keys are its own.
/// (`vitalwatch replay` is the file source; MQTT joins here.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// `POST /v1/readings` on the `[http]` server.
    Http(HttpSourceConfig),
    /// Simulated patients streaming in real time.
    Simulator(SimulatorConfig),
    /// A Kafka consumer-group member.
    Kafka(KafkaSettings),
}

/// One `[[notifiers]]` item: its `type` says which, the other keys are its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum NotifierConfig {
    /// Alert events onto a Kafka topic (the classic "doctors' queue").
    Kafka(KafkaNotifierSettings),
    /// Alert events as e-mail over SMTP.
    Smtp(SmtpSettings),
    /// Alert events as HTTP POSTs (JSON, Slack, Microsoft Teams).
    Webhook(WebhookSettings),
    /// Alert events onto an Amazon SNS topic.
    Sns(SnsSettings),
}

impl NotifierConfig {
    /// The notifier's name (its outbox cursor).
    pub fn name(&self) -> &str {
        match self {
            NotifierConfig::Kafka(k) => &k.name,
            NotifierConfig::Smtp(m) => &m.name,
            NotifierConfig::Webhook(w) => &w.name,
            NotifierConfig::Sns(a) => &a.name,
        }
    }

    /// The notifier's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            NotifierConfig::Kafka(_) => "kafka",
            NotifierConfig::Smtp(_) => "smtp",
            NotifierConfig::Webhook(_) => "webhook",
            NotifierConfig::Sns(_) => "sns",
        }
    }
}

impl SourceConfig {
    /// The source's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Http(_) => "http",
            SourceConfig::Simulator(_) => "simulator",
            SourceConfig::Kafka(_) => "kafka",
        }
    }
}

/// `[[sources]] type = "http"`: readings over HTTP (see `[http]` for the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {}

/// `[[sources]] type = "simulator"`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// How many patients (1–5 are the classic patients, the rest generated).
    pub patients: usize,
    /// Time between two observation sets of one patient.
    pub interval: Duration,
    /// Seed: the same seed gives the same patients, episodes and values.
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            patients: 24,
            interval: Duration::from_secs(1),
            seed: 42,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve HTTP.
    pub enabled: bool,
    /// Address to listen on. Loopback by default: nothing is exposed until you say so.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

/// `[alerts]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Print alerts on the console, one line each, coloured by priority on a terminal.
    pub console: bool,
    /// Show patient names on the console (off: patient id and ward only, so a screen or
    /// a captured log does not leak names).
    pub console_names: bool,
    /// Append every alert event to `<data_dir>/alerts.jsonl` (classic fields included).
    pub jsonl: bool,
    /// The `[[notifiers]]` item (by name) that gets the events another notifier gave up
    /// on (a permanent error), at once; it takes no other events. `""`: none. An event
    /// neither could deliver raises a technical alarm.
    pub fallback: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            console: true,
            console_names: false,
            jsonl: true,
            fallback: String::new(),
        }
    }
}

/// `[warehouse]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarehouseSection {
    /// Rows buffered per table before they are encoded into the open Parquet file. Small
    /// batches keep the archive's work even, so it overlaps with the rest of the pipeline
    /// (65,536 made the writer stall the engine for ~15 ms at a time: a standard replay
    /// ran 15 % slower); row groups are still up to 128 Ki rows.
    pub batch_rows: usize,
    /// Close a file after this many rows.
    pub roll_rows: usize,
    /// Close (make queryable) files open longer than this. Data becomes visible to
    /// `vitalwatch query` when its file closes.
    pub roll_interval: Duration,
    /// zstd compression level (1–22). Level 1 is the default: on the warehouse's
    /// dictionary-encoded pages it wrote smaller files than level 3 (alerts 11.7 vs
    /// 12.4 MB after a classic flood) in less CPU.
    pub zstd_level: i32,
    /// Where the warehouse lives: empty for `<data_dir>/warehouse`, or `s3://bucket/prefix`
    /// for S3-compatible object storage (the local folder then holds only files not yet
    /// uploaded). Credentials come from the standard AWS environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never from here.
    pub location: String,
    /// S3-compatible endpoint (MinIO, Ceph, moto), e.g. `http://127.0.0.1:5000`; empty for
    /// AWS. Plain http is used only when written here.
    pub s3_endpoint: String,
    /// The bucket's region; empty takes `AWS_REGION`, else us-east-1.
    pub s3_region: String,
}

impl Default for WarehouseSection {
    fn default() -> Self {
        WarehouseSection {
            batch_rows: 8_192,
            roll_rows: 5_000_000,
            roll_interval: Duration::from_secs(60),
            zstd_level: 1,
            location: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
        }
    }
}

impl WarehouseSection {
    /// The object-storage settings, when `location` names a bucket.
    pub fn s3(&self) -> Option<vitalwatch_connectors::warehouse::remote::S3Settings> {
        (!self.location.is_empty()).then(|| vitalwatch_connectors::warehouse::remote::S3Settings {
            location: self.location.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
        })
    }
}

/// `[pipeline]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Batches queued between sources and the engine. When full, sources wait
    /// (HTTP requests are held, never dropped).
    pub ingest_capacity: usize,
    /// Batches queued between the engine and the warehouse writer. Separate from the alert
    /// path, so a slow disk never delays an alarm.
    pub archive_capacity: usize,
    /// Alert batches (of up to 256 events) queued between the engine and the alert outputs.
    pub alert_capacity: usize,
    /// How often a resumable source (a replayed file) asks for a checkpoint: what it has
    /// read up to then becomes durable and its position is committed, so a crash re-reads
    /// at most this much. Each checkpoint publishes one file per open warehouse partition.
    pub checkpoint_interval: Duration,
    /// How often `run` looks for changed reference data in the catalog (a threshold
    /// import from another replica, an update in the database) and applies it without a
    /// restart; 0s: never.
    pub reference_refresh: Duration,
    /// With a PostgreSQL catalog: how long a replica's outbox stays its own after it
    /// stops renewing its lease (it renews every third of this). When a replica dies,
    /// another one delivers its undelivered alert events to the external notifiers
    /// (`[[notifiers]]`) after this long.
    pub outbox_lease: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            ingest_capacity: 64,
            archive_capacity: 32,
            alert_capacity: 64,
            checkpoint_interval: Duration::from_secs(5),
            reference_refresh: Duration::from_secs(2),
            outbox_lease: Duration::from_secs(15),
        }
    }
}

/// The documented default configuration, as `vitalwatch config default` prints it.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// A configuration file that cannot be used, with every problem found.
#[derive(Debug)]
pub struct ConfigProblems {
    /// The file.
    pub path: PathBuf,
    /// Each problem, in words.
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} problem(s) in {}:",
            self.problems.len(),
            self.path.display()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigProblems {}

/// Keys whose values are open maps (any key allowed).
const OPEN_MAPS: &[&str] = &["rules.thresholds.hysteresis"];

/// Arrays of tables, checked item by item.
const TABLE_ARRAYS: &[&str] = &["rules.limits", "sources", "notifiers", "routes"];

/// One problem, with the key it is about when there is one.
struct Problem {
    key: Option<String>,
    message: String,
}

/// Where each key of a TOML document is written (1-based line), by key path
/// (`rules.news2.enabled`, `rules.limits[1].name`).
#[derive(Default)]
struct KeyLines(std::collections::HashMap<String, usize>);

impl KeyLines {
    fn scan(text: &str) -> Self {
        let mut lines = KeyLines::default();
        let mut prefix = String::new();
        let mut arrays: std::collections::HashMap<String, usize> = Default::default();
        let clean = |k: &str| {
            k.split('.')
                .map(|p| p.trim().trim_matches('"').trim_matches('\''))
                .collect::<Vec<_>>()
                .join(".")
        };
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if let Some(h) = l.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
                let h = clean(h);
                let n = arrays.entry(h.clone()).or_insert(0);
                prefix = format!("{h}[{n}]");
                *n += 1;
                lines.0.entry(prefix.clone()).or_insert(i + 1);
            } else if let Some(h) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
                prefix = clean(h);
                lines.0.entry(prefix.clone()).or_insert(i + 1);
            } else if !l.starts_with('#')
                && let Some((k, _)) = l.split_once('=')
            {
                let k = clean(k);
                let path = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                lines.0.entry(path).or_insert(i + 1);
            }
        }
        lines
    }

    /// The line of a key, or of the nearest enclosing table written in the file.
    fn line(&self, key: &str) -> Option<usize> {
        let mut k = key;
        loop {
            if let Some(l) = self.0.get(k) {
                return Some(*l);
            }
            k = &k[..k.rfind(['.', '['])?];
        }
    }
}

/// Lists every key of `user` that the schema (the serialized defaults) does not have.
fn unknown_keys(user: &toml::Table, schema: &toml::Table, prefix: &str, out: &mut Vec<Problem>) {
    for (k, v) in user {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if OPEN_MAPS.contains(&path.as_str()) || path == "sources" || path == "notifiers" {
            continue;
        }
        match (v, schema.get(k)) {
            (_, None) => {
                let known: Vec<&str> = schema.keys().map(String::as_str).collect();
                out.push(Problem {
                    message: format!("unknown key `{path}` (known here: {})", known.join(", ")),
                    key: Some(path),
                });
            }
            (toml::Value::Table(u), Some(toml::Value::Table(s))) => unknown_keys(u, s, &path, out),
            (toml::Value::Array(items), Some(toml::Value::Array(s))) => {
                if let Some(toml::Value::Table(first)) = s.first() {
                    let mut item_schema = first.clone();
                    // Optional fields absent from the default item.
                    for opt in limit_item_keys(schema) {
                        item_schema.entry(opt).or_insert(toml::Value::Float(0.0));
                    }
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(t) = item {
                            unknown_keys(t, &item_schema, &format!("{path}[{i}]"), out);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Every value of `user` the schema knows, by path: leaves, open maps and arrays of tables
/// as whole values.
fn known_values<'a>(
    user: &'a toml::Table,
    schema: &toml::Table,
    out: &mut Vec<(Vec<String>, &'a toml::Value)>,
    path: &mut Vec<String>,
) {
    for (k, v) in user {
        let Some(s) = schema.get(k) else { continue };
        path.push(k.clone());
        let dotted = path.join(".");
        match (v, s) {
            (toml::Value::Table(u), toml::Value::Table(st))
                if !OPEN_MAPS.contains(&dotted.as_str()) =>
            {
                known_values(u, st, out, path)
            }
            _ => out.push((path.clone(), v)),
        }
        path.pop();
    }
}

/// Sets a value at a path of tables, creating tables on the way.
fn set_path(t: &mut toml::Table, path: &[String], v: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = t;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        cur = next;
    }
    cur.insert(last.clone(), v);
}

/// The keys a `[[rules.limits]]` item may have.
fn limit_item_keys(schema: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> = schema
        .get("rules")
        .and_then(|r| r.get("limits"))
        .and_then(|l| l.as_array())
        .and_then(|a| a.first())
        .and_then(|f| f.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    keys.extend(["below", "above", "scale"].map(String::from));
    keys
}

/// A deserialization error in one line, without serde's "in `...`" suffix noise.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses and validates configuration text. Every problem is reported in one pass:
/// unknown keys, values of the wrong type or form (each key on its own), and the
/// semantic checks (ranges, cross-field rules) over everything that did parse, each with
/// its key path and line.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigProblems> {
    let fail = |problems| ConfigProblems {
        path: path.to_owned(),
        problems,
    };
    let table: toml::Table =
        toml::from_str(text).map_err(|e| fail(vec![format!("not valid TOML: {e}")]))?;
    let lines = KeyLines::scan(text);
    let mut problems = Vec::new();
    let schema = toml::Table::try_from(Config::default()).expect("default config serializes");
    unknown_keys(&table, &schema, "", &mut problems);

    // Each known value on its own, over the defaults: one bad value cannot hide another.
    let mut merged = schema.clone();
    let mut values = Vec::new();
    known_values(&table, &schema, &mut values, &mut Vec::new());
    for (key, value) in values {
        let dotted = key.join(".");
        let value = if TABLE_ARRAYS.contains(&dotted.as_str()) {
            // Item by item: keep the good ones, report each bad one with its index.
            let items = value.as_array().cloned().unwrap_or_default();
            let item_keys = limit_item_keys(&schema);
            let mut good = Vec::new();
            for (i, mut item) in items.into_iter().enumerate() {
                let checked = if dotted == "sources" {
                    // Each type has its own keys: the item's own deserialization names
                    // an unknown one along with the keys its type has.
                    SourceConfig::deserialize(item.clone()).map(drop)
                } else if dotted == "notifiers" {
                    NotifierConfig::deserialize(item.clone()).map(drop)
                } else if dotted == "routes" {
                    crate::routing::RouteConfig::deserialize(item.clone()).map(drop)
                } else {
                    // Unknown keys are reported above, once.
                    if let toml::Value::Table(t) = &mut item {
                        t.retain(|k, _| item_keys.iter().any(|x| x == k));
                    }
                    vitalwatch_core::rules::LimitRule::deserialize(item.clone()).map(drop)
                };
                match checked {
                    Ok(()) => good.push(item),
                    Err(e) => {
                        problems.push(Problem {
                            key: Some(format!("{dotted}[{i}]")),
                            message: format!("`{dotted}[{i}]`: {}", one_line(e)),
                        });
                        if dotted == "sources" {
                            // A stand-in that checks clean, so the semantic checks below
                            // name the later sources by their own index.
                            let stand_in = SourceConfig::Simulator(SimulatorConfig::default());
                            if let Ok(v) = toml::Value::try_from(stand_in) {
                                good.push(v);
                            }
                        }
                    }
                }
            }
            toml::Value::Array(good)
        } else {
            value.clone()
        };
        let mut trial = schema.clone();
        set_path(&mut trial, &key, value.clone());
        match Config::deserialize(toml::Value::Table(trial)) {
            Ok(_) => set_path(&mut merged, &key, value),
            Err(e) => problems.push(Problem {
                message: format!(
                    "`{dotted}`: {}",
                    one_line(e).trim_end_matches(&format!(" in `{dotted}`"))
                ),
                key: Some(dotted),
            }),
        }
    }
    let cfg = match Config::deserialize(toml::Value::Table(merged)) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(Problem {
                key: None,
                message: one_line(e),
            });
            None
        }
    };
    if let Some(c) = &cfg {
        for message in c.problems() {
            // Semantic problems start with the key they are about.
            let key = message
                .split([' ', ':'])
                .next()
                .filter(|k| k.contains('.') || schema.contains_key(*k))
                .map(str::to_owned);
            problems.push(Problem { key, message });
        }
    }
    match cfg {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(fail(
            problems
                .into_iter()
                .map(|p| match p.key.as_deref().and_then(|k| lines.line(k)) {
                    Some(l) => format!("line {l}: {}", p.message),
                    None => p.message,
                })
                .collect(),
        )),
    }
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    Ok(parse(&text, path)?)
}

/// `HOST:PORT` with a port number and a host (a name, an IPv4 address, or `[IPv6]`).
pub fn is_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

impl Config {
    /// Every semantic problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.time.problems();
        p.extend(self.rules.problems());
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir is empty".into());
        }
        if !self.catalog.is_empty()
            && !self.catalog.starts_with("postgres://")
            && !self.catalog.starts_with("postgresql://")
        {
            p.push(
                "catalog must be empty (SQLite in the data directory) or a postgres:// URL".into(),
            );
        }
        if self.http.enabled && !is_host_port(&self.http.listen) {
            p.push(format!(
                "http.listen = {:?} is not HOST:PORT, such as 127.0.0.1:8080 or localhost:8080",
                self.http.listen
            ));
        }
        if self.http.max_body_bytes < 1024 {
            p.push("http.max_body_bytes must be at least 1024".into());
        }
        if self.warehouse.batch_rows == 0 || self.warehouse.roll_rows == 0 {
            p.push("warehouse.batch_rows and warehouse.roll_rows must be above 0".into());
        }
        if !(1..=22).contains(&self.warehouse.zstd_level) {
            p.push(format!(
                "warehouse.zstd_level = {} must be 1–22",
                self.warehouse.zstd_level
            ));
        }
        if self.warehouse.roll_interval < Duration::from_secs(1) {
            p.push("warehouse.roll_interval must be at least 1s".into());
        }
        if let Some(s3) = self.warehouse.s3() {
            use vitalwatch_connectors::warehouse::WarehouseError;
            match vitalwatch_connectors::warehouse::remote::ObjectWarehouse::s3(&s3) {
                Ok(_) => {}
                // Already "warehouse.location = …: what is wrong".
                Err(WarehouseError::Config(m)) => p.push(m),
                Err(e) => p.push(format!("warehouse.location: {e}")),
            }
        }
        if !self.warehouse.s3_endpoint.is_empty()
            && !self.warehouse.s3_endpoint.starts_with("http://")
            && !self.warehouse.s3_endpoint.starts_with("https://")
        {
            p.push(format!(
                "warehouse.s3_endpoint = {:?} must start with http:// or https://",
                self.warehouse.s3_endpoint
            ));
        }
        let http_sources = self
            .sources
            .iter()
            .filter(|s| matches!(s, SourceConfig::Http(_)))
            .count();
        if http_sources > 1 {
            p.push("sources: at most one source of type \"http\"".into());
        }
        if http_sources == 1 && !self.http.enabled {
            p.push("sources: the http source needs http.enabled = true".into());
        }
        for (i, src) in self.sources.iter().enumerate() {
            if let SourceConfig::Simulator(sim) = src {
                if sim.patients == 0 || sim.patients > 100_000 {
                    p.push(format!(
                        "sources[{i}].patients = {} must be 1–100000",
                        sim.patients
                    ));
                }
                if sim.interval < Duration::from_millis(10) {
                    p.push(format!(
                        "sources[{i}].interval = {} must be at least 10ms",
                        sim.interval
                    ));
                }
            }
        }
        for (i, src) in self.sources.iter().enumerate() {
            if let SourceConfig::Kafka(k) = src {
                p.extend(k.problems(&format!("sources[{i}]")));
                if self.sources.len() > 1 {
                    p.push(format!(
                        "sources[{i}]: a kafka source must be the only source of a run (its checkpoints decide which warehouse files a restart keeps; rows of other sources would be lost with them): run other sources in another vitalwatch"
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, n) in self.notifiers.iter().enumerate() {
            let name = n.name();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push(format!(
                    "notifiers[{i}].name = {name:?}: use letters, digits, `-` and `_`"
                ));
            } else if ["warehouse", "jsonl", "console"].contains(&name) {
                p.push(format!(
                    "notifiers[{i}].name = {name:?} is taken by a built-in output"
                ));
            } else if !names.insert(name) {
                p.push(format!(
                    "notifiers[{i}].name = {name:?} is used twice: each notifier keeps its own cursor under its name"
                ));
            }
            match n {
                NotifierConfig::Kafka(k) => {
                    if k.brokers.trim().is_empty() || k.topic.trim().is_empty() {
                        p.push(format!(
                            "notifiers[{i}]: a kafka notifier needs brokers and topic"
                        ));
                    }
                }
                NotifierConfig::Smtp(m) => p.extend(m.problems(&format!("notifiers[{i}]"))),
                NotifierConfig::Webhook(w) => p.extend(w.problems(&format!("notifiers[{i}]"))),
                NotifierConfig::Sns(a) => p.extend(a.problems(&format!("notifiers[{i}]"))),
            }
        }
        let names: Vec<&str> = self.notifiers.iter().map(NotifierConfig::name).collect();
        for (i, r) in self.routes.iter().enumerate() {
            p.extend(r.problems(i, &names));
        }
        if !self.routes.is_empty() {
            for n in &names {
                let routed = self
                    .routes
                    .iter()
                    .any(|r| r.tiers.iter().any(|t| t.notify.iter().any(|x| x == n)));
                if !routed && *n != self.alerts.fallback {
                    p.push(format!(
                        "notifier {n:?} is in no [[routes]] tier: with routes, it would never be used"
                    ));
                }
            }
        }
        if !self.alerts.fallback.is_empty()
            && !self
                .notifiers
                .iter()
                .any(|n| n.name() == self.alerts.fallback)
        {
            p.push(format!(
                "alerts.fallback = {:?} names no [[notifiers]] item",
                self.alerts.fallback
            ));
        }
        if self.pipeline.outbox_lease < Duration::from_secs(1) {
            p.push("pipeline.outbox_lease must be at least 1s".into());
        }
        if self.pipeline.checkpoint_interval < Duration::from_millis(100) {
            p.push("pipeline.checkpoint_interval must be at least 100ms".into());
        }
        for (name, v) in [
            ("pipeline.ingest_capacity", self.pipeline.ingest_capacity),
            ("pipeline.archive_capacity", self.pipeline.archive_capacity),
            ("pipeline.alert_capacity", self.pipeline.alert_capacity),
        ] {
            if v == 0 {
                p.push(format!("{name} must be above 0"));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key path of a TOML table (`rules.news2.enabled`, `rules.limits[0].name`).
    fn key_paths(t: &toml::Table, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => key_paths(inner, &path, out),
                toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(inner) = item {
                            key_paths(inner, &format!("{path}[{i}]"), out);
                        }
                    }
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    #[test]
    fn documented_default_is_the_default() {
        let parsed = parse(DEFAULT_CONFIG_TOML, Path::new("default")).unwrap();
        assert_eq!(parsed, Config::default());
        // The documented file names every key of the configuration, no more, no fewer...
        let mut documented = std::collections::BTreeSet::new();
        key_paths(
            &toml::from_str(DEFAULT_CONFIG_TOML).unwrap(),
            "",
            &mut documented,
        );
        let mut schema = std::collections::BTreeSet::new();
        key_paths(
            &toml::Table::try_from(Config::default()).unwrap(),
            "",
            &mut schema,
        );
        assert_eq!(documented, schema);
        // ...and every key line has its own comment right above it.
        let lines: Vec<&str> = DEFAULT_CONFIG_TOML.lines().map(str::trim).collect();
        for (i, l) in lines.iter().enumerate() {
            let is_key = !l.starts_with('#') && !l.starts_with('[') && l.contains(" = ");
            if is_key {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "undocumented key on line {}: {l}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = r#"
            data_dir = "/tmp/x"
            colour = "blue"
            [http]
            listen = "localhost"
            port = 80
            [[sources]]
            type = "simulator"
            seed = "forty-two"
            [[sources]]
            type = "simulator"
            patients = 0
            [warehouse]
            zstd_level = 40
            [rules]
            profile = "fancy"
            renotify_after = "1s"
            [rules.thresholds]
            persistence = "ten seconds"
            [[rules.limits]]
            name = "a"
            vital = "spo2"
            priority = "high"
            persistence = "0s"
            message = "m"
            treshold = 3
            [[rules.limits]]
            name = "b"
            vital = "pulse_ox"
            below = 90.0
            priority = "high"
            persistence = "0s"
            message = "m"
        "#;
        let err = parse(text, Path::new("bad.toml")).unwrap_err();
        let all = err.to_string();
        // One pass: unknown keys, types (each on its own), ranges and cross-field rules,
        // each with its line.
        for want in [
            "line 3: unknown key `colour`",
            "line 6: unknown key `http.port`",
            "line 26: unknown key `rules.limits[0].treshold`",
            "line 7: `sources[0]`: invalid type: string \"forty-two\"",
            "line 16: `rules.profile`: unknown variant `fancy`",
            "line 19: `rules.thresholds.persistence`: invalid duration \"ten seconds\"",
            "line 27: `rules.limits[1]`: unknown variant `pulse_ox`",
            "line 5: http.listen = \"localhost\" is not HOST:PORT",
            "line 12: sources[1].patients = 0 must be 1–100000",
            "line 14: warehouse.zstd_level = 40",
            "line 17: rules.renotify_after = 1s is too short",
            "line 20: rules.limits[0] (a): set `below`",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 12, "{all}");
        // Host names are addresses too.
        let ok = parse(
            "[http]\nlisten = \"localhost:8080\"\n",
            Path::new("ok.toml"),
        )
        .unwrap();
        assert_eq!(ok.http.listen, "localhost:8080");
    }

    #[test]
    fn a_warehouse_location_is_an_s3_url_and_its_endpoint_says_http_or_https() {
        let err = parse(
            "[warehouse]\nlocation = \"gs://ward/wh\"\ns3_endpoint = \"127.0.0.1:9000\"\n",
            Path::new("w.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "line 2: warehouse.location = \"gs://ward/wh\": expected s3://bucket[/prefix]"
            ),
            "{err}"
        );
        assert!(err.contains("line 3: warehouse.s3_endpoint"), "{err}");
        let ok = parse(
            "[warehouse]\nlocation = \"s3://ward/wh\"\ns3_endpoint = \"http://127.0.0.1:9000\"\n",
            Path::new("ok.toml"),
        )
        .unwrap();
        assert_eq!(ok.warehouse.s3().unwrap().location, "s3://ward/wh");
        assert!(Config::default().warehouse.s3().is_none());
    }

    #[test]
    fn type_errors_are_reported() {
        let err = parse(
            "[[sources]]\ntype = \"simulator\"\npatients = \"many\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 1: `sources[0]`"), "{err}");
        // Each source type has its own keys, and an unknown type is named.
        let err = parse(
            "[[sources]]\ntype = \"http\"\nport = 1\n[[sources]]\ntype = \"carrier-pigeon\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        let all = err.to_string();
        assert!(all.contains("unknown field `port`"), "{all}");
        assert!(
            all.contains("line 4: `sources[1]`: unknown variant `carrier-pigeon`"),
            "{all}"
        );
        let err = parse("[rules]\nrenotify_after = \"soon\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn kafka_settings_are_checked_all_at_once_and_secrets_stay_hidden() {
        let text = r#"
            [[sources]]
            type = "kafka"
            brokers = ""
            topics = ["vitals", "bad topic"]
            dead_letter_topic = "vitals"
            options = { "group.id" = "x", "sasl.password" = "hunter2" }
            [[sources]]
            type = "http"
            [[notifiers]]
            type = "kafka"
            name = "jsonl"
            topic = ""
            [[notifiers]]
            type = "kafka"
            topik = "alerts"
        "#;
        let err = parse(text, Path::new("k.toml")).unwrap_err();
        let all = err.to_string();
        for want in [
            "sources[0].brokers is empty",
            "sources[0].topics = [\"vitals\", \"bad topic\"]",
            "sources[0].dead_letter_topic must not be one of the topics read",
            "sources[0].options.\"group.id\" is set by vitalwatch",
            "sources[0]: a kafka source must be the only source of a run",
            "notifiers[0].name = \"jsonl\" is taken by a built-in output",
            "notifiers[0]: a kafka notifier needs brokers and topic",
            "`notifiers[1]`: unknown field `topik`",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(!all.contains("hunter2"), "a secret in an error: {all}");
        let shown = KafkaSettings {
            options: [("sasl.password".to_owned(), "hunter2".to_owned())].into(),
            ..KafkaSettings::default()
        }
        .describe();
        assert!(
            shown.contains("sasl.password=***") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
