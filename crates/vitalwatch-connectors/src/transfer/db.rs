//! The two database clients behind one [`Database`]: connect, describe and read a result,
//! and export batches through a staging table in one transaction.

use std::io::{BufRead, BufReader, Write};

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use mysql::consts::{ColumnFlags, ColumnType};
use mysql::prelude::Queryable;

use super::{BatchBuilder, ColumnKind, SourceColumn, TransferError, normalise, text_value};

/// Which SQL dialect a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    MySql,
}

/// How exported rows meet the rows already in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMode {
    /// Added to the table (a re-run adds them again).
    Insert,
    /// Added, or replacing the row with the same key (safe to re-run).
    Upsert,
}

/// What an export did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// Rows sent to the database.
    pub rows: u64,
    /// Rows the final statement inserted or changed, as the database counts them.
    pub affected: u64,
}

/// How much a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStats {
    /// Rows read.
    pub rows: u64,
}

/// A connection to MariaDB/MySQL or PostgreSQL.
pub enum Database {
    /// PostgreSQL (the sync client: transfer runs off the async runtime).
    Postgres(Box<postgres::Client>),
    /// MariaDB or MySQL.
    MySql(mysql::Conn),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Database::Postgres(_) => "Database::Postgres",
            Database::MySql(_) => "Database::MySql",
        })
    }
}

fn db_err(e: impl std::fmt::Display) -> TransferError {
    TransferError::Database(e.to_string())
}

/// The PostgreSQL error with its detail (the client's `Display` is only "db error").
fn pg_err(e: postgres::Error) -> TransferError {
    match e.as_db_error() {
        Some(d) => TransferError::Database(d.message().to_owned()),
        None => TransferError::Database(e.to_string()),
    }
}

impl Database {
    /// Connects to `url` (`postgres://…`, `postgresql://…`, `mysql://…`, `mariadb://…`)
    /// with `password` (never part of the URL: see the binary's `--password-file`). The
    /// session reads and writes instants in UTC.
    pub fn connect(url: &str, password: Option<&str>) -> Result<Self, TransferError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => {
                let mut cfg: postgres::Config = url
                    .parse()
                    .map_err(|e| TransferError::Config(format!("connection URL: {e}")))?;
                if let Some(p) = password {
                    cfg.password(p);
                }
                let mut c = cfg.connect(postgres::NoTls).map_err(pg_err)?;
                c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
                    .map_err(pg_err)?;
                Ok(Database::Postgres(Box::new(c)))
            }
            "mysql" | "mariadb" => {
                let url = format!("mysql://{}", &url[scheme.len() + 3..]);
                let opts = mysql::Opts::from_url(&url)
                    .map_err(|e| TransferError::Config(format!("connection URL: {e}")))?;
                let mut b = mysql::OptsBuilder::from_opts(opts).prefer_socket(false);
                if let Some(p) = password {
                    b = b.pass(Some(p));
                }
                let mut c = mysql::Conn::new(b).map_err(db_err)?;
                c.query_drop(
                    "SET time_zone = '+00:00', sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
                )
                .map_err(db_err)?;
                Ok(Database::MySql(c))
            }
            _ => Err(TransferError::Config(format!(
                "connection URL must start with postgres://, postgresql://, mysql:// or mariadb:// (got {:?})",
                scheme
            ))),
        }
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Database::Postgres(_) => Dialect::Postgres,
            Database::MySql(_) => Dialect::MySql,
        }
    }

    /// `name` quoted as an identifier (a table may be `schema.table`).
    pub fn ident(&self, name: &str) -> String {
        name.split('.')
            .map(|part| match self.dialect() {
                Dialect::Postgres => format!("\"{}\"", part.replace('"', "\"\"")),
                Dialect::MySql => format!("`{}`", part.replace('`', "``")),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// `value` as a string literal.
    pub fn literal(&self, value: &str) -> String {
        match self.dialect() {
            Dialect::Postgres => format!("'{}'", value.replace('\'', "''")),
            Dialect::MySql => mysql_literal(value),
        }
    }

    /// The columns `sql` returns, with the kind each is read as; reads no row. A column
    /// of a type that cannot be converted is an error naming it.
    pub fn columns(&mut self, sql: &str) -> Result<Vec<SourceColumn>, TransferError> {
        match self {
            Database::Postgres(c) => {
                let st = c.prepare(sql).map_err(pg_err)?;
                st.columns()
                    .iter()
                    .map(|col| pg_kind(col.name(), col.type_(), col.type_modifier()))
                    .collect()
            }
            Database::MySql(c) => {
                let st = c.prep(sql).map_err(db_err)?;
                st.columns().iter().map(mysql_kind).collect()
            }
        }
    }

    /// One value (the first column of the first row) of `sql`, as text.
    pub fn scalar(&mut self, sql: &str) -> Result<Option<String>, TransferError> {
        match self {
            Database::Postgres(c) => {
                let sql = format!("SELECT ({})::text", sql.trim_end_matches(';'));
                let row = c.query_one(&sql, &[]).map_err(pg_err)?;
                Ok(row.get(0))
            }
            Database::MySql(c) => {
                let v: Option<mysql::Value> = c.query_first(sql).map_err(db_err)?;
                Ok(match v {
                    None | Some(mysql::Value::NULL) => None,
                    Some(mysql::Value::Bytes(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                    Some(other) => Some(other.as_sql(true).trim_matches('\'').to_owned()),
                })
            }
        }
    }

    /// Reads every row of `sql` into batches of up to `batch_rows` rows, handing each to
    /// `f` as it fills (memory stays flat however large the result).
    pub fn read(
        &mut self,
        sql: &str,
        batch_rows: usize,
        f: &mut dyn FnMut(RecordBatch) -> Result<(), TransferError>,
    ) -> Result<ReadStats, TransferError> {
        let columns = self.columns(sql)?;
        let n = columns.len();
        let mut b = BatchBuilder::new(columns);
        let mut rows = 0u64;
        let batch_rows = batch_rows.max(1);
        match self {
            Database::Postgres(c) => {
                let copy = format!("COPY ({}) TO STDOUT", sql.trim().trim_end_matches(';'));
                let mut r = BufReader::with_capacity(1 << 20, c.copy_out(&copy).map_err(pg_err)?);
                let mut line = Vec::new();
                let mut field = String::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).map_err(db_err)? == 0 {
                        break;
                    }
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    rows += 1;
                    let mut i = 0;
                    for raw in line.split(|&c| c == b'\t') {
                        if i >= n {
                            return Err(db_err("COPY returned more fields than columns"));
                        }
                        if raw == b"\\N" {
                            b.push(i, None, rows)?;
                        } else {
                            unescape_copy(raw, &mut field);
                            b.push(i, Some(&field), rows)?;
                        }
                        i += 1;
                    }
                    if i != n {
                        return Err(db_err("COPY returned fewer fields than columns"));
                    }
                    if b.len() >= batch_rows {
                        f(b.finish()?)?;
                    }
                }
            }
            Database::MySql(c) => {
                let result = c.query_iter(sql).map_err(db_err)?;
                for row in result {
                    let row = row.map_err(db_err)?;
                    rows += 1;
                    for i in 0..n {
                        match row.as_ref(i) {
                            None | Some(mysql::Value::NULL) => b.push(i, None, rows)?,
                            Some(mysql::Value::Bytes(v)) => {
                                let s =
                                    std::str::from_utf8(v).map_err(|_| TransferError::Value {
                                        row: rows,
                                        column: b.columns[i].name.clone(),
                                        message: "not valid UTF-8".into(),
                                    })?;
                                b.push(i, Some(s), rows)?;
                            }
                            Some(other) => {
                                let s = other.as_sql(true);
                                b.push(i, Some(s.trim_matches('\'')), rows)?;
                            }
                        }
                    }
                    if b.len() >= batch_rows {
                        f(b.finish()?)?;
                    }
                }
            }
        }
        if !b.is_empty() || rows == 0 {
            f(b.finish()?)?;
        }
        Ok(ReadStats { rows })
    }

    /// Whether table `table` exists (and can be read).
    pub fn table_exists(&mut self, table: &str) -> bool {
        let sql = format!("SELECT * FROM {} WHERE 1 = 0", self.ident(table));
        self.columns(&sql).is_ok()
    }

    /// Streams the batches `next` yields (all of `schema`) into `table` in one
    /// transaction (PostgreSQL: `COPY` into a staging table, then one statement into the
    /// target; MariaDB: `LOAD DATA LOCAL INFILE` into the target, or for an upsert into a
    /// temporary table and then one statement), so an export that fails or is
    /// killed part-way leaves the target exactly as it was.
    /// `create` creates the target if it does not exist (with `key` as its primary key);
    /// [`ExportMode::Upsert`] needs `key` to be the target's primary or unique key.
    pub fn export(
        &mut self,
        table: &str,
        schema: &Schema,
        mode: ExportMode,
        key: &[String],
        create: bool,
        next: &mut dyn FnMut() -> Result<Option<RecordBatch>, TransferError>,
    ) -> Result<ExportReport, TransferError> {
        let dialect = self.dialect();
        let mut cols = Vec::new();
        for f in schema.fields() {
            let kind = ColumnKind::of(f.data_type()).ok_or_else(|| TransferError::Unsupported {
                column: f.name().clone(),
                type_name: f.data_type().to_string(),
            })?;
            cols.push((f.name().clone(), kind));
        }
        for k in key {
            if !cols.iter().any(|(c, _)| c == k) {
                return Err(TransferError::Config(format!(
                    "key column {k} is not among the exported columns ({})",
                    cols.iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if mode == ExportMode::Upsert && key.is_empty() {
            return Err(TransferError::Config(
                "upsert needs --key (the target's primary or unique key)".into(),
            ));
        }
        let target = self.ident(table);
        let defs = |with_key: bool| {
            let mut d: Vec<String> = cols
                .iter()
                .map(|(c, k)| format!("{} {}", self.ident(c), k.sql_type(dialect, key.contains(c))))
                .collect();
            if with_key && !key.is_empty() {
                d.push(format!("PRIMARY KEY ({})", self.idents(key)));
            }
            d.join(", ")
        };
        let create_sql = format!("CREATE TABLE IF NOT EXISTS {target} ({})", defs(true));
        let stage_cols = defs(false);
        let list = self.idents(&cols.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>());
        // Quoted here, once: inside the match below `self` is borrowed by its client.
        let keys = self.idents(key);
        let first_key = key.first().map(|k| self.ident(k)).unwrap_or_default();
        let non_key: Vec<String> = cols
            .iter()
            .map(|(c, _)| c)
            .filter(|c| !key.contains(c))
            .map(|c| self.ident(c))
            .collect();
        if !create && !self.table_exists(table) {
            return Err(TransferError::Database(format!(
                "table {table} does not exist (pass --create-table to create it)"
            )));
        }
        let mut report = ExportReport::default();
        match self {
            Database::Postgres(c) => {
                let mut tx = c.transaction().map_err(pg_err)?;
                if create {
                    tx.batch_execute(&create_sql).map_err(pg_err)?;
                }
                tx.batch_execute(&format!(
                    "CREATE TEMP TABLE vitalwatch_stage ({stage_cols}) ON COMMIT DROP"
                ))
                .map_err(pg_err)?;
                {
                    let w = tx
                        .copy_in(&format!("COPY vitalwatch_stage ({list}) FROM STDIN"))
                        .map_err(pg_err)?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
                    let mut line = String::new();
                    while let Some(batch) = next()? {
                        let batch = normalise(&batch)?;
                        for row in 0..batch.num_rows() {
                            line.clear();
                            report.rows += 1;
                            text_row(
                                &batch,
                                row,
                                &cols,
                                Dialect::Postgres,
                                report.rows,
                                &mut line,
                            )?;
                            w.write_all(line.as_bytes()).map_err(db_err)?;
                        }
                    }
                    let w = w.into_inner().map_err(|e| db_err(e.error()))?;
                    w.finish().map_err(pg_err)?;
                }
                let sql = match mode {
                    ExportMode::Insert => {
                        format!("INSERT INTO {target} ({list}) SELECT {list} FROM vitalwatch_stage")
                    }
                    ExportMode::Upsert => {
                        let set = if non_key.is_empty() {
                            "NOTHING".to_owned()
                        } else {
                            format!(
                                "UPDATE SET {}",
                                non_key
                                    .iter()
                                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        // One row per key: the target cannot take a key twice in one
                        // statement.
                        format!(
                            "INSERT INTO {target} ({list}) SELECT DISTINCT ON ({keys}) {list} FROM vitalwatch_stage ON CONFLICT ({keys}) DO {set}"
                        )
                    }
                };
                report.affected = tx.execute(&sql, &[]).map_err(pg_err)?;
                tx.commit().map_err(pg_err)?;
            }
            Database::MySql(c) => {
                if create {
                    // DDL commits implicitly: before the transaction, never inside it.
                    c.query_drop(&create_sql).map_err(db_err)?;
                }
                // InnoDB keeps the rows of an open transaction invisible and rolls them
                // back when the connection drops (a kill) or we give up: the transaction
                // is the staging area for insert mode. Rows stream through `LOAD DATA
                // LOCAL INFILE` (twice as fast as multi-row INSERTs), formatted on this
                // thread while a second one feeds the connection.
                let mut tx = c
                    .start_transaction(mysql::TxOpts::default())
                    .map_err(db_err)?;
                let into = match mode {
                    ExportMode::Insert => target.clone(),
                    ExportMode::Upsert => {
                        // A temporary table neither commits the transaction nor is seen
                        // by anyone else; the upsert is then one statement.
                        tx.query_drop(format!(
                            "CREATE TEMPORARY TABLE vitalwatch_stage ({stage_cols})"
                        ))
                        .map_err(db_err)?;
                        "vitalwatch_stage".to_owned()
                    }
                };
                let load = format!(
                    "LOAD DATA LOCAL INFILE 'vitalwatch-export' INTO TABLE {into} CHARACTER SET utf8mb4 ({list})"
                );
                let (mut tx, loaded) = mysql_load(tx, &load, |send| {
                    let mut chunk = String::with_capacity(1 << 20);
                    while let Some(batch) = next()? {
                        let batch = normalise(&batch)?;
                        for row in 0..batch.num_rows() {
                            report.rows += 1;
                            text_row(&batch, row, &cols, Dialect::MySql, report.rows, &mut chunk)?;
                            if chunk.len() >= 1 << 20
                                && !send(std::mem::replace(
                                    &mut chunk,
                                    String::with_capacity(1 << 20),
                                ))
                            {
                                // The load ended early: its error says why.
                                return Ok(());
                            }
                        }
                    }
                    if !chunk.is_empty() {
                        send(chunk);
                    }
                    Ok(())
                })?;
                // A LOCAL load turns every refused row (a duplicate key, a value that does
                // not fit its column) into a warning and skips it; here any warning fails
                // the export, and the rollback leaves the table as it was.
                if loaded.warnings > 0 || loaded.affected != report.rows {
                    let first: Option<(String, u32, String)> =
                        tx.query_first("SHOW WARNINGS LIMIT 1").map_err(db_err)?;
                    let why = first.map_or_else(
                        || format!("{} of {} rows were loaded", loaded.affected, report.rows),
                        |(_, code, message)| format!("{message} (MariaDB/MySQL warning {code})"),
                    );
                    tx.rollback().map_err(db_err)?;
                    return Err(TransferError::Database(format!(
                        "{} of {} rows were refused; the first: {why}",
                        report.rows.saturating_sub(loaded.affected).max(1),
                        report.rows
                    )));
                }
                report.affected = loaded.affected;
                if mode == ExportMode::Upsert {
                    let set = if non_key.is_empty() {
                        // Nothing to update: touch the key to make the duplicate a no-op.
                        format!("{target}.{first_key} = {target}.{first_key}")
                    } else {
                        non_key
                            .iter()
                            .map(|c| format!("{target}.{c} = VALUES({c})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    tx.query_drop(format!(
                        "INSERT INTO {target} ({list}) SELECT {list} FROM vitalwatch_stage ON DUPLICATE KEY UPDATE {set}"
                    ))
                    .map_err(db_err)?;
                    report.affected = tx.affected_rows();
                    tx.query_drop("DROP TEMPORARY TABLE vitalwatch_stage")
                        .map_err(db_err)?;
                }
                tx.commit().map_err(db_err)?;
            }
        }
        Ok(report)
    }

    fn idents(&self, names: &[String]) -> String {
        names
            .iter()
            .map(|n| self.ident(n))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One row as a line of the tab-separated text both bulk paths read (PostgreSQL `COPY …
/// FROM STDIN`, MariaDB `LOAD DATA`): `\N` for NULL, backslash escapes, booleans as 1/0.
/// `number` is the row's 1-based position in the export, for the error.
fn text_row(
    batch: &RecordBatch,
    row: usize,
    cols: &[(String, ColumnKind)],
    dialect: Dialect,
    number: u64,
    out: &mut String,
) -> Result<(), TransferError> {
    for (i, a) in batch.columns().iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        let Some(v) = text_value(a.as_ref(), row) else {
            out.push_str("\\N");
            continue;
        };
        match cols[i].1 {
            ColumnKind::Bool => out.push(if v == "true" { '1' } else { '0' }),
            ColumnKind::Float
                if dialect == Dialect::MySql && !v.parse::<f64>().is_ok_and(f64::is_finite) =>
            {
                return Err(TransferError::Value {
                    row: number,
                    column: cols[i].0.clone(),
                    message: format!("{v} cannot be stored in a MariaDB/MySQL DOUBLE"),
                });
            }
            _ => escape_copy(&v, out),
        }
    }
    out.push('\n');
    Ok(())
}

/// What a `LOAD DATA` statement reported.
struct Loaded {
    affected: u64,
    warnings: u16,
}

/// Runs `sql` (a `LOAD DATA LOCAL INFILE`) on a second thread while `produce` hands it the
/// file's text chunk by chunk through a short queue; the send function returns false once
/// the load has ended (its result then says why). Memory stays at a few chunks however
/// large the export.
fn mysql_load<'c>(
    mut tx: mysql::Transaction<'c>,
    sql: &str,
    produce: impl FnOnce(&mut dyn FnMut(String) -> bool) -> Result<(), TransferError>,
) -> Result<(mysql::Transaction<'c>, Loaded), TransferError> {
    let (send, recv) = std::sync::mpsc::sync_channel::<String>(4);
    let mut recv = Some(recv);
    tx.set_local_infile_handler(Some(mysql::LocalInfileHandler::new(move |_, w| {
        if let Some(chunks) = recv.take() {
            for chunk in chunks {
                w.write_all(chunk.as_bytes())?;
            }
        }
        Ok(())
    })));
    std::thread::scope(|s| {
        let loader = s.spawn(move || {
            let result = tx.query_drop(sql).map_err(|e| {
                let hint = if e.to_string().contains("1148") {
                    " (the server has local_infile off: SET GLOBAL local_infile = 1)"
                } else {
                    ""
                };
                TransferError::Database(format!("{e}{hint}"))
            });
            // Drops the queue's receiver: a producer still sending learns the load ended.
            tx.set_local_infile_handler(None);
            let loaded = Loaded {
                affected: tx.affected_rows(),
                warnings: tx.warnings(),
            };
            (tx, result.map(|()| loaded))
        });
        let produced = produce(&mut |chunk| send.send(chunk).is_ok());
        drop(send);
        let (tx, loaded) = loader
            .join()
            .map_err(|_| TransferError::Database("the load thread panicked".into()))?;
        // A value the producer refused explains more than the load it cut short.
        produced?;
        Ok((tx, loaded?))
    })
}

/// A MariaDB/MySQL string literal (backslash escapes are on: the session clears
/// `NO_BACKSLASH_ESCAPES`).
fn mysql_literal(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        match c {
            '\'' => s.push_str("\\'"),
            '\\' => s.push_str("\\\\"),
            '\0' => s.push_str("\\0"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\u{1a}' => s.push_str("\\Z"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// A field of PostgreSQL's COPY text format back to its value.
fn unescape_copy(raw: &[u8], out: &mut String) {
    out.clear();
    if !raw.contains(&b'\\') {
        out.push_str(&String::from_utf8_lossy(raw));
        return;
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 == raw.len() {
            bytes.push(c);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        match e {
            b'b' => bytes.push(8),
            b'f' => bytes.push(12),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut k = 0;
                while k < 2 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    k += 1;
                }
                bytes.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + (raw[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                bytes.push(v as u8);
            }
            other => bytes.push(other),
        }
    }
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// A value in PostgreSQL's COPY text format (which MariaDB's `LOAD DATA` reads too).
fn escape_copy(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // Neither format takes a raw NUL (PostgreSQL text refuses it either way).
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
}

fn pg_kind(
    name: &str,
    t: &postgres::types::Type,
    typmod: i32,
) -> Result<SourceColumn, TransferError> {
    use postgres::types::Type;
    let kind = match *t {
        Type::BOOL => ColumnKind::Bool,
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => ColumnKind::Int,
        Type::FLOAT4 | Type::FLOAT8 => ColumnKind::Float,
        Type::NUMERIC if typmod >= 4 => {
            let p = ((typmod - 4) >> 16) & 0xffff;
            let s = (typmod - 4) & 0xffff;
            ColumnKind::Decimal(p.clamp(1, 38) as u8, s.min(38) as i8)
        }
        Type::NUMERIC => ColumnKind::Decimal(38, 10),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UUID
        | Type::JSON
        | Type::JSONB => ColumnKind::Text,
        Type::DATE => ColumnKind::Date,
        Type::TIMESTAMP => ColumnKind::Timestamp,
        Type::TIMESTAMPTZ => ColumnKind::TimestampTz,
        _ => {
            return Err(TransferError::Unsupported {
                column: name.to_owned(),
                type_name: t.name().to_owned(),
            });
        }
    };
    Ok(SourceColumn {
        name: name.to_owned(),
        type_name: t.name().to_owned(),
        kind,
    })
}

fn mysql_kind(c: &mysql::Column) -> Result<SourceColumn, TransferError> {
    let name = c.name_str().into_owned();
    let t = c.column_type();
    // Character set 63 is `binary`: BLOB/BINARY columns, which are not text.
    let binary = c.character_set() == 63;
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let kind = match t {
        ColumnType::MYSQL_TYPE_TINY if c.column_length() == 1 => ColumnKind::Bool,
        ColumnType::MYSQL_TYPE_TINY
        | ColumnType::MYSQL_TYPE_SHORT
        | ColumnType::MYSQL_TYPE_INT24
        | ColumnType::MYSQL_TYPE_LONG
        | ColumnType::MYSQL_TYPE_YEAR => ColumnKind::Int,
        // An unsigned BIGINT past i64::MAX is refused per value, with its row.
        ColumnType::MYSQL_TYPE_LONGLONG => ColumnKind::Int,
        ColumnType::MYSQL_TYPE_FLOAT | ColumnType::MYSQL_TYPE_DOUBLE => ColumnKind::Float,
        ColumnType::MYSQL_TYPE_NEWDECIMAL | ColumnType::MYSQL_TYPE_DECIMAL => {
            let scale = c.decimals();
            // The display length counts the sign and the point.
            let len = c.column_length() as i64 - i64::from(scale > 0) - i64::from(!unsigned);
            ColumnKind::Decimal(len.clamp(1, 38) as u8, scale.min(38) as i8)
        }
        ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_ENUM
        | ColumnType::MYSQL_TYPE_SET
        | ColumnType::MYSQL_TYPE_JSON
            if !binary =>
        {
            ColumnKind::Text
        }
        ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => ColumnKind::Date,
        ColumnType::MYSQL_TYPE_DATETIME | ColumnType::MYSQL_TYPE_DATETIME2 => ColumnKind::Timestamp,
        ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2 => {
            ColumnKind::TimestampTz
        }
        _ => {
            return Err(TransferError::Unsupported {
                column: name,
                type_name: format!("{t:?}{}", if binary { " (binary)" } else { "" })
                    .trim_start_matches("MYSQL_TYPE_")
                    .to_owned(),
            });
        }
    };
    Ok(SourceColumn {
        type_name: format!("{t:?}")
            .trim_start_matches("MYSQL_TYPE_")
            .to_lowercase(),
        name,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_round_trip() {
        let v = "tab\there\\ and\nnewline";
        let mut e = String::new();
        escape_copy(v, &mut e);
        let mut back = String::new();
        unescape_copy(e.as_bytes(), &mut back);
        assert_eq!(back, v);
        unescape_copy(b"\\101\\x42", &mut back);
        assert_eq!(back, "AB");
    }
}
