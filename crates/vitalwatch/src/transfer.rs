//! `vitalwatch import`, `vitalwatch export` and `vitalwatch transfer job …`: relational
//! databases in and out, streaming, incremental, safe to re-run (the Sqoop role).
//!
//! The database side (connections, types, staging) is `vitalwatch_connectors::transfer`;
//! this module parses the command line, builds the SQL (`--table`/`--query`, `--where`,
//! the incremental bounds), maps columns onto the destination and keeps saved jobs
//! (`<data>/transfer-jobs/NAME.json`, each with its last value).

use std::collections::HashMap;
use std::fs;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use vitalwatch_connectors::source::wall_now;
use vitalwatch_connectors::transfer::{
    Database, ExportMode, SourceColumn, TransferError, text_value,
};
use vitalwatch_connectors::warehouse::arrow::datatypes::{Field, Schema};
use vitalwatch_connectors::warehouse::arrow::record_batch::RecordBatch;
use vitalwatch_connectors::warehouse::{QueryStream, TABLES};
use vitalwatch_core::reference::patient_from_row;

use crate::cli::DataArgs;
use crate::commands::{confirm, load_config};
use crate::pipeline::warehouse_root;

/// The environment variable read for the database password when neither
/// `--password-file` nor `--password-env` is given.
pub const PASSWORD_ENV: &str = "VITALWATCH_DB_PASSWORD";

/// Where the password comes from: never the command line.
#[derive(Debug, Args, Clone, Default)]
pub struct PasswordArgs {
    /// A file holding the database password (its first line).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The environment variable holding the password [default: VITALWATCH_DB_PASSWORD].
    #[arg(long)]
    pub password_env: Option<String>,
}

impl PasswordArgs {
    fn password(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.password_file {
            let text = fs::read_to_string(f)
                .with_context(|| format!("cannot read password file {}", f.display()))?;
            return Ok(Some(text.lines().next().unwrap_or("").to_owned()));
        }
        let var = self.password_env.as_deref().unwrap_or(PASSWORD_ENV);
        match std::env::var(var) {
            Ok(p) => Ok(Some(p)),
            Err(_) if self.password_env.is_some() => {
                bail!("the environment variable {var} (--password-env) is not set")
            }
            Err(_) => Ok(None),
        }
    }
}

/// Refuses a URL with a password in it (command lines end up in shell histories and
/// process lists), and connects.
fn connect(url: &str, pw: &PasswordArgs) -> anyhow::Result<Database> {
    if let Some((_, rest)) = url.split_once("://")
        && let Some((user_info, _)) = rest.split_once('@')
        && user_info.contains(':')
    {
        bail!(
            "the connection URL holds a password: leave it out and use --password-file FILE, --password-env VAR or {PASSWORD_ENV}"
        );
    }
    Database::connect(url, pw.password()?.as_deref())
        .with_context(|| format!("cannot connect to {url}"))
}

/// Sqoop's incremental modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Incremental {
    /// Rows whose check column (an increasing id) is above the last value.
    Append,
    /// Rows whose check column (a last-modified timestamp) is after the last value;
    /// existing patients are updated.
    Lastmodified,
}

/// `vitalwatch import`
#[derive(Debug, Args, Clone)]
pub struct ImportArgs {
    /// Source database: mysql://USER@HOST:PORT/DB, mariadb://…, postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    pub connect: String,
    /// Source table (every column).
    #[arg(long, conflicts_with = "query", required_unless_present = "query")]
    pub table: Option<String>,
    /// Source query instead of a table.
    #[arg(long)]
    pub query: Option<String>,
    /// Destination: catalog:patients, warehouse:TABLE, or a file ending in .csv or .parquet.
    #[arg(long)]
    pub to: String,
    /// A condition the rows must meet (SQL, in the source's dialect).
    #[arg(long = "where")]
    pub where_: Option<String>,
    /// Column mapping SRC=DST (repeatable): onto the patient fields for catalog:patients
    /// (patient_id, name, address, phone, ward, age, spo2_scale, other_details; the
    /// classic column names map by themselves), a rename for files and tables.
    #[arg(long = "map", value_name = "SRC=DST")]
    pub map: Vec<String>,
    /// Incremental import: append (increasing id) or lastmodified (timestamp).
    #[arg(long, value_enum, requires = "check_column")]
    pub incremental: Option<Incremental>,
    /// The column an incremental import checks.
    #[arg(long)]
    pub check_column: Option<String>,
    /// Import only rows past this value of the check column.
    #[arg(long)]
    pub last_value: Option<String>,
    /// The key an updated row replaces (lastmodified; the patient id for the catalog).
    #[arg(long)]
    pub merge_key: Option<String>,
    /// Print the source schema, the mapping, the target types and the row count; import
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows per batch read from the database.
    #[arg(long, default_value_t = 65_536)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub password: PasswordArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// `vitalwatch export`
#[derive(Debug, Args, Clone)]
pub struct ExportArgs {
    /// What to export: warehouse:TABLE.
    #[arg(long)]
    pub from: String,
    /// A condition on the rows (SQL over the warehouse).
    #[arg(long = "where")]
    pub where_: Option<String>,
    /// The columns to export, comma-separated [default: every column, with the partition
    /// columns date and hour].
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Target database URL.
    #[arg(long)]
    pub connect: String,
    /// Target table.
    #[arg(long)]
    pub table: String,
    /// insert: add the rows; upsert: add or replace by --key (safe to re-run).
    #[arg(long, value_enum, default_value = "insert")]
    pub mode: ModeArg,
    /// The target's key (comma-separated columns) for upsert.
    #[arg(long, value_delimiter = ',')]
    pub key: Vec<String>,
    /// Create the target table if it does not exist (with --key as its primary key).
    #[arg(long)]
    pub create_table: bool,
    /// Print the columns, their target types and the row count; export nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub password: PasswordArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Export mode on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Add the rows.
    Insert,
    /// Add or replace by key.
    Upsert,
}

/// `vitalwatch transfer …`
#[derive(Debug, Subcommand)]
pub enum TransferCommand {
    /// Saved import jobs that remember their last value.
    #[command(subcommand)]
    Job(JobCommand),
}

/// `vitalwatch transfer job …`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Save an import as a job: `transfer job create NAME -- import --connect … --incremental …`.
    Create {
        /// Job name (letters, digits, `-`, `_`).
        name: String,
        /// The import command line after `--` (starting with `import`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Run a job; an incremental job continues from its last value and saves the new one.
    Run {
        /// Job name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// The saved jobs.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// One job as JSON.
    Show {
        /// Job name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Delete a job.
    Delete {
        /// Job name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// Where an import goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    /// The catalog's patients (upserted by patient id; a running engine picks them up).
    Patients,
    /// A table of the warehouse's own (`<warehouse>/NAME/date=…/hour=…/`).
    Warehouse(String),
    /// A CSV file with a header.
    Csv(PathBuf),
    /// A Parquet file.
    Parquet(PathBuf),
}

impl Destination {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if let Some(t) = s.strip_prefix("catalog:") {
            if t == "patients" {
                return Ok(Destination::Patients);
            }
            bail!("--to catalog:{t}: the catalog takes patients only (catalog:patients)");
        }
        if let Some(t) = s.strip_prefix("warehouse:") {
            let valid = !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !t.as_bytes()[0].is_ascii_digit();
            if !valid {
                bail!("--to warehouse:{t}: a table name is lower-case letters, digits and _");
            }
            if TABLES.contains(&t) {
                bail!(
                    "--to warehouse:{t}: {t} is written by the pipeline; import into a table of its own"
                );
            }
            return Ok(Destination::Warehouse(t.to_owned()));
        }
        let p = PathBuf::from(s);
        match p.extension().and_then(|e| e.to_str()) {
            Some("csv") => Ok(Destination::Csv(p)),
            Some("parquet") => Ok(Destination::Parquet(p)),
            _ => bail!(
                "--to {s}: expected catalog:patients, warehouse:TABLE, or a file ending in .csv or .parquet"
            ),
        }
    }
}

/// The patient fields, by the classic column name the CSV import uses, with the other
/// names each answers to.
const PATIENT_FIELDS: [(&str, &[&str]); 8] = [
    ("patientid", &["patient_id", "id"]),
    ("patientname", &["name", "patient_name"]),
    ("patientaddress", &["address", "patient_address"]),
    ("phone_number", &["phone"]),
    ("admitted_ward", &["ward"]),
    ("age", &[]),
    ("spo2_scale", &[]),
    ("other_details", &[]),
];

/// The patient field (its classic name) that `name` stands for, if any.
fn patient_field(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    PATIENT_FIELDS
        .iter()
        .find(|(classic, others)| *classic == n || others.contains(&n.as_str()))
        .map(|(classic, _)| *classic)
}

/// `--map SRC=DST` pairs.
fn parse_maps(maps: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    maps.iter()
        .map(|m| match m.split_once('=') {
            Some((s, d)) if !s.is_empty() && !d.is_empty() => Ok((s.to_owned(), d.to_owned())),
            _ => bail!("--map {m:?}: expected SOURCE_COLUMN=DESTINATION"),
        })
        .collect()
}

/// For each source column, the name it gets at the destination (`None`: not imported).
fn mapping(
    dest: &Destination,
    columns: &[SourceColumn],
    maps: &[(String, String)],
) -> anyhow::Result<Vec<Option<String>>> {
    for (src, _) in maps {
        if !columns.iter().any(|c| &c.name == src) {
            bail!(
                "--map {src}=…: the source has no column {src} (it has {})",
                columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let explicit = |c: &SourceColumn| maps.iter().find(|(s, _)| *s == c.name).map(|(_, d)| d);
    if *dest != Destination::Patients {
        return Ok(columns
            .iter()
            .map(|c| Some(explicit(c).cloned().unwrap_or_else(|| c.name.clone())))
            .collect());
    }
    let mut out = Vec::new();
    for c in columns {
        out.push(match explicit(c) {
            Some(d) => Some(
                patient_field(d)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--map {}={d}: {d} is not a patient field (patient_id, name, address, phone, ward, age, spo2_scale, other_details)",
                            c.name
                        )
                    })?
                    .to_owned(),
            ),
            None => patient_field(&c.name).map(str::to_owned),
        });
    }
    let mut seen = HashMap::new();
    for (c, m) in columns.iter().zip(&out) {
        if let Some(m) = m
            && let Some(other) = seen.insert(m.clone(), c.name.clone())
        {
            bail!(
                "columns {other} and {} both map to {m}: --map one of them elsewhere",
                c.name
            );
        }
    }
    if !seen.contains_key("patientid") {
        bail!("no source column maps to patient_id: add --map COLUMN=patient_id");
    }
    Ok(out)
}

/// A value for SQL: numbers as they are, anything else quoted.
fn literal(db: &Database, v: &str) -> String {
    if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok_and(f64::is_finite) {
        v.to_owned()
    } else {
        db.literal(v)
    }
}

/// The source relation: the table, or the query as a derived table.
fn source_from(db: &Database, a: &ImportArgs) -> String {
    match (&a.table, &a.query) {
        (Some(t), _) => db.ident(t),
        (None, Some(q)) => format!("({}) vitalwatch_src", q.trim().trim_end_matches(';')),
        (None, None) => unreachable!("clap requires --table or --query"),
    }
}

/// The conditions of `--where` and the incremental bounds (`upper`: the check column's
/// maximum when the import started, so rows committed meanwhile wait for the next run
/// instead of being half-seen).
fn conditions(db: &Database, a: &ImportArgs, upper: Option<&str>) -> Vec<String> {
    let mut c = Vec::new();
    if let Some(w) = &a.where_ {
        c.push(format!("({w})"));
    }
    if a.incremental.is_some()
        && let Some(col) = &a.check_column
    {
        let col = db.ident(col);
        if let Some(v) = &a.last_value {
            c.push(format!("{col} > {}", literal(db, v)));
        }
        if let Some(u) = upper {
            c.push(format!("{col} <= {}", literal(db, u)));
        }
    }
    c
}

fn where_clause(c: &[String]) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", c.join(" AND "))
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Rows read from the source.
    pub rows: u64,
    /// The check column's value to continue from next time (incremental imports).
    pub last_value: Option<String>,
}

/// A spinner with rows and rows/s on a terminal; nothing otherwise (the summary line
/// says it all).
fn row_counter(what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} rows ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `vitalwatch import`
pub fn import(a: ImportArgs) -> anyhow::Result<ImportOutcome> {
    let cfg = load_config(&a.data)?;
    let dest = Destination::parse(&a.to)?;
    let maps = parse_maps(&a.map)?;
    if a.incremental.is_some() && a.check_column.is_none() {
        bail!("--incremental needs --check-column");
    }
    if let Some(k) = &a.merge_key {
        if a.incremental != Some(Incremental::Lastmodified) {
            bail!("--merge-key goes with --incremental lastmodified");
        }
        if dest != Destination::Patients {
            bail!(
                "--merge-key: only catalog:patients merges rows (files and warehouse tables keep every version)"
            );
        }
        let _ = k;
    }
    let mut db = connect(&a.connect, &a.password)?;
    let from = source_from(&db, &a);
    let upper = match (&a.incremental, &a.check_column) {
        (Some(_), Some(col)) => {
            let base = conditions(&db, &a, None);
            db.scalar(&format!(
                "SELECT max({}) FROM {from}{}",
                db.ident(col),
                where_clause(&base)
            ))
            .with_context(|| format!("cannot read the maximum of check column {col}"))?
        }
        _ => None,
    };
    if a.incremental.is_some() && upper.is_none() {
        confirm(format_args!(
            "nothing to import: no rows past the last value {}",
            a.last_value.as_deref().unwrap_or("(none)")
        ));
        return Ok(ImportOutcome {
            rows: 0,
            last_value: a.last_value.clone(),
        });
    }
    let conds = conditions(&db, &a, upper.as_deref());
    let order = match &a.check_column {
        Some(c) if a.incremental.is_some() => format!(" ORDER BY {}", db.ident(c)),
        _ => String::new(),
    };
    let sql = format!("SELECT * FROM {from}{}{order}", where_clause(&conds));
    let columns = db.columns(&sql).with_context(|| {
        format!(
            "cannot read from {}",
            a.table.as_deref().unwrap_or("the query")
        )
    })?;
    if let (Some(_), Some(col)) = (&a.merge_key, &a.check_column)
        && !columns.iter().any(|c| &c.name == col)
    {
        bail!("check column {col} is not among the source's columns");
    }
    let names = mapping(&dest, &columns, &maps)?;
    if let (Some(k), Destination::Patients) = (&a.merge_key, &dest) {
        let maps_to_id = columns
            .iter()
            .zip(&names)
            .any(|(c, m)| &c.name == k && m.as_deref() == Some("patientid"));
        if !maps_to_id {
            bail!(
                "--merge-key {k}: the catalog merges patients by patient id; {k} must be the column that maps to patient_id"
            );
        }
    }
    if a.dry_run {
        let n = db.scalar(&format!(
            "SELECT count(*) FROM {from}{}",
            where_clause(&conds)
        ))?;
        let mut out = format!("source: {sql}\nrows: {}\n", n.unwrap_or_default());
        out.push_str(&format!(
            "{:<24} {:<18} {:<24} {}\n",
            "column", "source type", "arrow type", "destination"
        ));
        for (c, m) in columns.iter().zip(&names) {
            out.push_str(&format!(
                "{:<24} {:<18} {:<24} {}\n",
                c.name,
                c.type_name,
                c.kind.data_type().to_string(),
                match (m, &dest) {
                    (None, _) => "(not imported)".to_owned(),
                    (Some(m), Destination::Patients) => format!("patients.{m}"),
                    (Some(m), _) => m.clone(),
                }
            ));
        }
        crate::commands::emit(&out)?;
        return Ok(ImportOutcome {
            rows: 0,
            last_value: a.last_value.clone(),
        });
    }

    let started = Instant::now();
    let bar = row_counter("importing");
    let described = format!(
        "{}{}",
        a.connect,
        a.table
            .as_ref()
            .map(|t| format!(" table {t}"))
            .unwrap_or_else(|| " query".into())
    );
    let rows = match &dest {
        Destination::Patients => {
            let mut patients = Vec::new();
            let mut problems = Vec::new();
            let mut ids: HashMap<String, u64> = HashMap::new();
            let mut row_no = 0u64;
            let stats = db.read(&sql, a.batch_rows, &mut |batch| {
                for r in 0..batch.num_rows() {
                    row_no += 1;
                    let mut row = HashMap::new();
                    for (i, m) in names.iter().enumerate() {
                        if let Some(m) = m {
                            let v = text_value(batch.column(i).as_ref(), r).unwrap_or_default();
                            row.insert(m.clone(), v);
                        }
                    }
                    match patient_from_row(&row) {
                        Ok(p) => {
                            if let Some(first) =
                                ids.insert(p.patient_id.as_str().to_owned(), row_no)
                                && a.merge_key.is_none()
                            {
                                problems.push(format!(
                                    "row {row_no}: patient id {} repeats row {first}",
                                    p.patient_id
                                ));
                            }
                            patients.push(p);
                        }
                        Err(p) => {
                            problems.extend(p.into_iter().map(|m| format!("row {row_no}: {m}")))
                        }
                    }
                }
                bar.inc(batch.num_rows() as u64);
                Ok(())
            })?;
            bar.finish_and_clear();
            if let [one] = problems.as_slice() {
                bail!("{one}; nothing was imported");
            }
            if !problems.is_empty() {
                let shown: Vec<&String> = problems.iter().take(20).collect();
                bail!(
                    "{} problem(s) in the source rows; nothing was imported:\n  - {}{}",
                    problems.len(),
                    shown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n  - "),
                    if problems.len() > 20 {
                        format!("\n  … and {} more", problems.len() - 20)
                    } else {
                        String::new()
                    }
                );
            }
            // With a merge key, the newest version of a patient wins (rows come in
            // check-column order).
            if a.merge_key.is_some() {
                let mut last: HashMap<String, usize> = HashMap::new();
                for (i, p) in patients.iter().enumerate() {
                    last.insert(p.patient_id.as_str().to_owned(), i);
                }
                let mut keep: Vec<usize> = last.into_values().collect();
                keep.sort_unstable();
                patients = keep.into_iter().map(|i| patients[i].clone()).collect();
            }
            let _lock = crate::commands::lock_data_dir(&cfg.data_dir, "import")?;
            let source = format!("import {described}");
            let mut store = crate::commands::open_catalog(&cfg)?;
            let r = store.import_patients(&patients, &source, wall_now())?;
            crate::commands::snapshot_patients(&cfg, store.as_ref(), &source)?;
            confirm(format_args!(
                "catalog:patients: {} added, {} updated, {} unchanged",
                r.added,
                r.updated.len(),
                r.unchanged
            ));
            for (id, fields) in &r.updated {
                confirm(format_args!(
                    "  updated patient {id}: {}",
                    fields.join(", ")
                ));
            }
            stats.rows
        }
        Destination::Csv(path) | Destination::Parquet(path) => {
            let parquet = matches!(dest, Destination::Parquet(_));
            let rows = write_file(
                &mut db,
                &sql,
                a.batch_rows,
                &names,
                path,
                parquet,
                &bar,
                &[],
            )?;
            bar.finish_and_clear();
            rows
        }
        Destination::Warehouse(table) => {
            let now = chrono::Utc::now();
            let dir = warehouse_root(&cfg.data_dir)
                .join(table)
                .join(format!("date={}", now.format("%Y-%m-%d")))
                .join(format!("hour={}", now.format("%-H")));
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            // A full import is a snapshot: a file of its own. An incremental one is named
            // after its range (source, last value, bound), so running the same range again
            // (after a crash between writing the file and saving the job's last value)
            // replaces that file instead of adding its rows a second time.
            let name = match a.incremental {
                None => format!(
                    "part-import-{}-{}.parquet",
                    now.timestamp_micros(),
                    std::process::id()
                ),
                Some(_) => format!(
                    "part-import-r{:016x}.parquet",
                    vitalwatch_core::alert::stable_hash(&[
                        a.connect.as_bytes(),
                        from.as_bytes(),
                        a.where_.as_deref().unwrap_or("").as_bytes(),
                        a.last_value.as_deref().unwrap_or("").as_bytes(),
                        upper.as_deref().unwrap_or("").as_bytes(),
                    ])
                ),
            };
            let _lock = crate::commands::lock_data_dir(&cfg.data_dir, "import")?;
            let table_dir = warehouse_root(&cfg.data_dir).join(table);
            let earlier: Vec<PathBuf> = fs::read_dir(&table_dir)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
                .map(|h| h.path().join(&name))
                .filter(|p| p.is_file())
                .collect();
            let path = dir.join(&name);
            let rows = write_file(
                &mut db,
                &sql,
                a.batch_rows,
                &names,
                &path,
                true,
                &bar,
                &earlier,
            )?;
            bar.finish_and_clear();
            // On object storage an earlier file of the same range may already be there
            // (under another hour): it goes, and the new one replaces it.
            if let Some(r) = vitalwatch_connectors::warehouse::remote::installed()
                && a.incremental.is_some()
            {
                r.remove_named(&name)?;
            }
            crate::commands::upload_spool(&cfg)?;
            rows
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let last_value = if a.incremental.is_some() {
        upper.or(a.last_value.clone())
    } else {
        None
    };
    confirm(format_args!(
        "imported {rows} rows from {described} into {} in {secs:.1} s ({:.0} rows/s{}){}",
        a.to,
        rows as f64 / secs.max(1e-9),
        peak_memory(),
        last_value
            .as_ref()
            .map(|v| format!("; last value {v}"))
            .unwrap_or_default()
    ));
    Ok(ImportOutcome { rows, last_value })
}

/// Streams the result of `sql` into a CSV or Parquet file at `path`, renamed into place
/// only when complete (a failed import leaves no partial file); `replaces`: earlier files
/// with the same rows, removed just before.
#[allow(clippy::too_many_arguments)]
fn write_file(
    db: &mut Database,
    sql: &str,
    batch_rows: usize,
    names: &[Option<String>],
    path: &Path,
    parquet: bool,
    bar: &indicatif::ProgressBar,
    replaces: &[PathBuf],
) -> anyhow::Result<u64> {
    use vitalwatch_connectors::warehouse::arrow::csv;
    use vitalwatch_connectors::warehouse::parquet::arrow::ArrowWriter;
    use vitalwatch_connectors::warehouse::parquet::basic::{Compression, ZstdLevel};
    use vitalwatch_connectors::warehouse::parquet::file::properties::WriterProperties;

    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the destination needs a file name")?;
    let tmp = path.with_file_name(format!(".{file_name}.inprogress"));
    let file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    enum W {
        Csv(Box<csv::Writer<fs::File>>),
        Parquet(Box<ArrowWriter<fs::File>>),
    }
    let mut writer: Option<W> = None;
    let mut file = Some(file);
    let rename = |batch: &RecordBatch| -> Result<RecordBatch, TransferError> {
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .zip(names)
            .map(|(f, n)| {
                f.as_ref()
                    .clone()
                    .with_name(n.clone().unwrap_or_else(|| f.name().clone()))
            })
            .collect();
        Ok(RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(fields)),
            batch.columns().to_vec(),
        )?)
    };
    let r = db.read(sql, batch_rows, &mut |batch| {
        let batch = rename(&batch)?;
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let f = file.take().expect("the file is taken once");
                writer.insert(if parquet {
                    let props = WriterProperties::builder()
                        .set_compression(Compression::ZSTD(ZstdLevel::default()))
                        .build();
                    W::Parquet(Box::new(
                        ArrowWriter::try_new(f, batch.schema(), Some(props))
                            .map_err(|e| TransferError::Database(format!("parquet: {e}")))?,
                    ))
                } else {
                    W::Csv(Box::new(
                        csv::WriterBuilder::new().with_header(true).build(f),
                    ))
                })
            }
        };
        match w {
            W::Csv(w) => w.write(&batch)?,
            W::Parquet(w) => w
                .write(&batch)
                .map_err(|e| TransferError::Database(format!("parquet: {e}")))?,
        }
        bar.inc(batch.num_rows() as u64);
        Ok(())
    });
    let closed = match (r, writer) {
        (Ok(stats), Some(W::Parquet(w))) => w
            .close()
            .map(|_| stats.rows)
            .map_err(|e| anyhow::anyhow!("parquet: {e}")),
        (Ok(stats), _) => Ok(stats.rows),
        (Err(e), _) => Err(e.into()),
    };
    match closed {
        Ok(rows) => {
            for old in replaces.iter().filter(|p| p.as_path() != path) {
                fs::remove_file(old)
                    .with_context(|| format!("cannot replace {}", old.display()))?;
            }
            fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename into {}", path.display()))?;
            Ok(rows)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `vitalwatch export`
pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    let cfg = load_config(&a.data)?;
    let Some(table) = a.from.strip_prefix("warehouse:") else {
        bail!("--from {}: expected warehouse:TABLE", a.from);
    };
    let root = warehouse_root(&cfg.data_dir);
    let select = if a.columns.is_empty() {
        "*".to_owned()
    } else {
        a.columns
            .iter()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = format!(
        "SELECT {select} FROM \"{}\"{}",
        table.replace('"', "\"\""),
        a.where_
            .as_ref()
            .map(|w| format!(" WHERE {w}"))
            .unwrap_or_default()
    );
    let mut stream =
        QueryStream::new(&root, &sql).with_context(|| format!("cannot read warehouse:{table}"))?;
    let schema = stream.schema();
    let mode = match a.mode {
        ModeArg::Insert => ExportMode::Insert,
        ModeArg::Upsert => ExportMode::Upsert,
    };
    let mut db = connect(&a.connect, &a.password)?;
    if a.dry_run {
        let count = warehouse_count(&root, table, a.where_.as_deref())?;
        let mut out = format!("source: {sql}\nrows: {count}\n");
        out.push_str(&format!(
            "{:<24} {:<30} {}\n",
            "column", "arrow type", "target type"
        ));
        for f in schema.fields() {
            let t = vitalwatch_connectors::transfer::ColumnKind::of(f.data_type())
                .map(|k| k.sql_type(db.dialect(), a.key.contains(f.name())))
                .unwrap_or_else(|| "(cannot be exported)".into());
            out.push_str(&format!(
                "{:<24} {:<30} {t}\n",
                f.name(),
                f.data_type().to_string()
            ));
        }
        crate::commands::emit(&out)?;
        return Ok(());
    }
    let started = Instant::now();
    let bar = row_counter("exporting");
    let report = db
        .export(&a.table, &schema, mode, &a.key, a.create_table, &mut || {
            let b = stream
                .next_batch()
                .map_err(|e| TransferError::Database(format!("warehouse: {e}")))?;
            if let Some(b) = &b {
                bar.inc(b.num_rows() as u64);
            }
            Ok(b)
        })
        .with_context(|| format!("export into {} failed; the table is as it was", a.table))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    confirm(format_args!(
        "exported {} rows from warehouse:{table} into {} ({}: {} rows written) in {secs:.1} s ({:.0} rows/s{})",
        report.rows,
        a.table,
        match mode {
            ExportMode::Insert => "insert",
            ExportMode::Upsert => "upsert",
        },
        report.affected,
        report.rows as f64 / secs.max(1e-9),
        peak_memory()
    ));
    Ok(())
}

/// `, peak memory N MiB` where the platform says (it must not grow with the table).
fn peak_memory() -> String {
    crate::commands::peak_rss_mib()
        .map(|m| format!(", peak memory {m:.0} MiB"))
        .unwrap_or_default()
}

fn warehouse_count(root: &Path, table: &str, where_: Option<&str>) -> anyhow::Result<u64> {
    let sql = format!(
        "SELECT count(*) AS n FROM \"{}\"{}",
        table.replace('"', "\"\""),
        where_.map(|w| format!(" WHERE {w}")).unwrap_or_default()
    );
    let mut s = QueryStream::new(root, &sql)?;
    let mut n = 0u64;
    while let Some(b) = s.next_batch()? {
        for r in 0..b.num_rows() {
            n += text_value(b.column(0).as_ref(), r)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(n)
}

/// A saved import job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Job {
    name: String,
    /// The import command line (starting with `import`).
    command: Vec<String>,
    /// Where the next run continues (incremental jobs).
    last_value: Option<String>,
    created_at: String,
    last_run: Option<String>,
    last_rows: Option<u64>,
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true, name = "import")]
struct JobLine {
    #[command(subcommand)]
    command: JobLineCommand,
}

#[derive(Debug, Subcommand)]
enum JobLineCommand {
    Import(ImportArgs),
}

fn jobs_dir(data: &DataArgs) -> anyhow::Result<PathBuf> {
    Ok(load_config(data)?.data_dir.join("transfer-jobs"))
}

fn job_path(data: &DataArgs, name: &str) -> anyhow::Result<PathBuf> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("job name {name:?}: use letters, digits, - and _");
    }
    Ok(jobs_dir(data)?.join(format!("{name}.json")))
}

fn read_job(data: &DataArgs, name: &str) -> anyhow::Result<(PathBuf, Job)> {
    let path = job_path(data, name)?;
    let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("no job {name} (vitalwatch transfer job list shows the saved ones)")
        }
        _ => anyhow::Error::from(e).context(format!("cannot read {}", path.display())),
    })?;
    let job =
        serde_json::from_str(&text).with_context(|| format!("{} is not a job", path.display()))?;
    Ok((path, job))
}

/// Writes `job` atomically: a crash mid-write keeps the previous version (and its last
/// value), never half a file.
fn write_job(path: &Path, job: &Job) -> anyhow::Result<()> {
    let dir = path.parent().context("job path has a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(job)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all())?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The job's command line for this run: its saved last value instead of the one it was
/// created with, and the job command's data directory unless it names its own.
fn job_args(job: &Job, data: &DataArgs) -> Vec<String> {
    let mut args = Vec::new();
    let mut it = job.command.iter();
    while let Some(a) = it.next() {
        if a == "--last-value" {
            it.next();
            continue;
        }
        if a.starts_with("--last-value=") {
            continue;
        }
        args.push(a.clone());
    }
    if let Some(v) = &job.last_value {
        args.push("--last-value".into());
        args.push(v.clone());
    }
    let names = |flag: &str| {
        job.command
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !names("--data")
        && let Some(d) = &data.data
    {
        args.push("--data".into());
        args.push(d.display().to_string());
    }
    if !names("--config")
        && !names("-c")
        && let Some(c) = &data.config
    {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    args
}

/// `vitalwatch transfer …`
pub fn transfer(cmd: TransferCommand) -> anyhow::Result<()> {
    let TransferCommand::Job(job) = cmd;
    match job {
        JobCommand::Create {
            name,
            command,
            data,
        } => {
            let path = job_path(&data, &name)?;
            if path.exists() {
                bail!("job {name} exists (transfer job delete {name} first)");
            }
            let line = JobLine::try_parse_from(&command).map_err(|e| {
                anyhow::anyhow!(
                    "the job's command is not an import: {}",
                    e.to_string().trim()
                )
            })?;
            let JobLineCommand::Import(args) = line.command;
            Destination::parse(&args.to)?;
            let job = Job {
                name: name.clone(),
                command,
                last_value: args.last_value.clone(),
                created_at: wall_now().to_string(),
                last_run: None,
                last_rows: None,
            };
            write_job(&path, &job)?;
            confirm(format_args!("saved job {name} ({})", path.display()));
        }
        JobCommand::Run { name, data } => {
            let (path, mut job) = read_job(&data, &name)?;
            let line = JobLine::try_parse_from(job_args(&job, &data))
                .map_err(|e| anyhow::anyhow!("job {name}: {}", e.to_string().trim()))?;
            let JobLineCommand::Import(args) = line.command;
            let outcome = import(args)
                .with_context(|| format!("job {name} failed; its last value is unchanged"))?;
            job.last_value = outcome.last_value;
            job.last_run = Some(wall_now().to_string());
            job.last_rows = Some(outcome.rows);
            write_job(&path, &job)?;
        }
        JobCommand::List { data } => {
            let dir = jobs_dir(&data)?;
            let mut jobs = Vec::new();
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "json")
                        && let Ok(t) = fs::read_to_string(&p)
                        && let Ok(j) = serde_json::from_str::<Job>(&t)
                    {
                        jobs.push(j);
                    }
                }
            }
            jobs.sort_by(|a, b| a.name.cmp(&b.name));
            let mut out = format!(
                "{:<20} {:<28} {:<26} {}\n",
                "job", "last value", "last run", "command"
            );
            for j in &jobs {
                out.push_str(&format!(
                    "{:<20} {:<28} {:<26} {}\n",
                    j.name,
                    j.last_value.as_deref().unwrap_or("-"),
                    j.last_run.as_deref().unwrap_or("never"),
                    j.command.join(" ")
                ));
            }
            crate::commands::emit(&out)?;
        }
        JobCommand::Show { name, data } => {
            let (_, job) = read_job(&data, &name)?;
            crate::commands::emit(&(serde_json::to_string_pretty(&job)? + "\n"))?;
        }
        JobCommand::Delete { name, data } => {
            let (path, _) = read_job(&data, &name)?;
            fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
            confirm(format_args!("deleted job {name}"));
        }
    }
    Ok(())
}
