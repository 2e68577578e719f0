//! The configuration file: one TOML document, every field documented and defaulted.
//!
//! `vitalwatch config default` prints [`DEFAULT_CONFIG_TOML`], the documented defaults;
//! a test keeps it equal to [`Config::default`], so the docs cannot drift from the code.
//! [`load`] validates a file and reports every problem at once: unknown keys (all of
//! them, not just the first), type errors, and semantic checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitalwatch_core::clock::TimeConfig;
use vitalwatch_core::model::Duration;
use vitalwatch_core::rules::RulesConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the catalog, the warehouse and the alert log live.
    pub data_dir: PathBuf,
    /// Event-time limits: future and old readings, out-of-order tolerance.
    pub time: TimeConfig,
    /// Clinical rules.
    pub rules: RulesConfig,
    /// Built-in simulator that streams vitals into the engine.
    pub simulator: SimulatorConfig,
    /// HTTP ingest, health, metrics and alert API.
    pub http: HttpConfig,
    /// Alert outputs.
    pub alerts: AlertsConfig,
    /// Parquet warehouse.
    pub warehouse: WarehouseSection,
    /// Internal channels.
    pub pipeline: PipelineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./vitalwatch-data"),
            time: TimeConfig::default(),
            rules: RulesConfig::default(),
            simulator: SimulatorConfig::default(),
            http: HttpConfig::default(),
            alerts: AlertsConfig::default(),
            warehouse: WarehouseSection::default(),
            pipeline: PipelineConfig::default(),
        }
    }
}

/// `[simulator]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Stream simulated patients into the engine.
    pub enabled: bool,
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
            enabled: true,
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
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            console: true,
            console_names: false,
            jsonl: true,
        }
    }
}

/// `[warehouse]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarehouseSection {
    /// Rows buffered per table before they are encoded into the open Parquet file.
    pub batch_rows: usize,
    /// Close a file after this many rows.
    pub roll_rows: usize,
    /// Close (make queryable) files open longer than this. Data becomes visible to
    /// `vitalwatch query` when its file closes.
    pub roll_interval: Duration,
    /// zstd compression level (1–22).
    pub zstd_level: i32,
}

impl Default for WarehouseSection {
    fn default() -> Self {
        WarehouseSection {
            batch_rows: 65_536,
            roll_rows: 5_000_000,
            roll_interval: Duration::from_secs(60),
            zstd_level: 3,
        }
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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            ingest_capacity: 64,
            archive_capacity: 32,
            alert_capacity: 64,
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

/// Lists every key of `user` that the schema (the serialized defaults) does not have.
fn unknown_keys(user: &toml::Table, schema: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in user {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if OPEN_MAPS.contains(&path.as_str()) {
            continue;
        }
        match (v, schema.get(k)) {
            (_, None) => {
                let known: Vec<&str> = schema.keys().map(String::as_str).collect();
                out.push(format!(
                    "unknown key `{path}` (known here: {})",
                    known.join(", ")
                ));
            }
            (toml::Value::Table(u), Some(toml::Value::Table(s))) => unknown_keys(u, s, &path, out),
            (toml::Value::Array(items), Some(toml::Value::Array(s))) => {
                if let Some(toml::Value::Table(first)) = s.first() {
                    let mut item_schema = first.clone();
                    // Optional fields absent from the default item.
                    for opt in ["below", "above", "scale"] {
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

/// Parses and validates configuration text.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigProblems> {
    let fail = |problems| ConfigProblems {
        path: path.to_owned(),
        problems,
    };
    let table: toml::Table =
        toml::from_str(text).map_err(|e| fail(vec![format!("not valid TOML: {e}")]))?;
    let mut problems = Vec::new();
    let schema = toml::Table::try_from(Config::default()).expect("default config serializes");
    unknown_keys(&table, &schema, "", &mut problems);
    let cfg = match Config::deserialize(toml::Value::Table(table)) {
        Ok(c) => Some(c),
        Err(e) => {
            let msg = e.to_string();
            // Unknown keys were listed above with their full paths.
            if !msg.contains("unknown field") {
                problems.push(msg.trim().to_owned());
            }
            None
        }
    };
    if let Some(c) = &cfg {
        problems.extend(c.problems());
    }
    match cfg {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(fail(problems)),
    }
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    Ok(parse(&text, path)?)
}

impl Config {
    /// Every semantic problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.time.problems();
        p.extend(self.rules.problems());
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir is empty".into());
        }
        if self.http.enabled && self.http.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "http.listen = {:?} is not an address such as 127.0.0.1:8080",
                self.http.listen
            ));
        }
        if self.http.max_body_bytes < 1024 {
            p.push("http.max_body_bytes must be at least 1024".into());
        }
        if self.simulator.patients == 0 || self.simulator.patients > 100_000 {
            p.push(format!(
                "simulator.patients = {} must be 1–100000",
                self.simulator.patients
            ));
        }
        if self.simulator.interval < Duration::from_millis(10) {
            p.push(format!(
                "simulator.interval = {} must be at least 10ms",
                self.simulator.interval
            ));
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
            [simulator]
            patients = 0
            [rules]
            renotify_after = "1s"
            [[rules.limits]]
            name = "a"
            vital = "spo2"
            priority = "high"
            persistence = "0s"
            message = "m"
            treshold = 3
        "#;
        let err = parse(text, Path::new("bad.toml")).unwrap_err();
        let all = err.to_string();
        for want in [
            "unknown key `colour`",
            "unknown key `http.port`",
            "unknown key `rules.limits[0].treshold`",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 3, "{all}");

        // Once the keys are right, the semantic checks all report together.
        let text = text
            .replace("colour = \"blue\"", "")
            .replace("port = 80", "")
            .replace("treshold = 3", "");
        let err = parse(&text, Path::new("bad.toml")).unwrap_err();
        let all = err.to_string();
        for want in [
            "http.listen",
            "simulator.patients",
            "renotify_after",
            "rules.limits[0] (a): set `below`",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(err.problems.len(), 4, "{all}");
    }

    #[test]
    fn type_errors_are_reported() {
        let err = parse("[simulator]\npatients = \"many\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("patients"), "{err}");
        let err = parse("[rules]\nrenotify_after = \"soon\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
