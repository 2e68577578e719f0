//! Reading the warehouse back: SQL with DataFusion, output formats, and Hive DDL.
//!
//! This is the read side of the archive path (`vitalwatch query "SQL"` and
//! `vitalwatch warehouse ddl`). It only ever sees closed files: in-progress files carry a
//! hidden name without the `.parquet` extension.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

use super::WarehouseError;
use super::schema::{TABLES, partition_cols, table_schema};

/// A DataFusion session with vitalwatch's functions: `date_trunc` on UTC timestamps
/// (every timestamp in the warehouse) takes integer arithmetic instead of DataFusion's
/// per-row time-zone path, which made a count per hour 5× slower than DuckDB.
///
/// DataFusion's own settings can be changed from the environment for a run, e.g.
/// `DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS=true` (an unreadable value is ignored,
/// with a log line).
fn session() -> SessionContext {
    let config = datafusion::prelude::SessionConfig::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "DATAFUSION_* settings in the environment ignored");
        datafusion::prelude::SessionConfig::new()
    });
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(ScalarUDF::new_from_impl(UtcDateTrunc {
        inner: datafusion::functions::datetime::date_trunc(),
    }));
    ctx
}

/// `date_trunc` that, for a timestamp in UTC, truncates the zone-less values (in UTC the
/// local and the universal time are the same, for every granularity: no daylight saving)
/// and puts the zone back (both by re-tagging the array, no value converted); anything
/// else goes to DataFusion's own `date_trunc`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDateTrunc {
    inner: Arc<ScalarUDF>,
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "utc" | "+00:00" | "Z" | "Etc/UTC")
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> datafusion::error::Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(
        &self,
        mut args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let utc = match args.arg_fields.get(1).map(|f| f.data_type()) {
            Some(DataType::Timestamp(unit, Some(tz))) if is_utc(tz) => Some((*unit, tz.clone())),
            _ => None,
        };
        let Some((unit, tz)) = utc else {
            return self.inner.invoke_with_args(args);
        };
        let naive = DataType::Timestamp(unit, None);
        args.args[1] = retag(&args.args[1], None)?;
        args.arg_fields[1] = Arc::new(
            args.arg_fields[1]
                .as_ref()
                .clone()
                .with_data_type(naive.clone()),
        );
        args.return_field = Arc::new(args.return_field.as_ref().clone().with_data_type(naive));
        let out = self.inner.invoke_with_args(args)?;
        retag(&out, Some(tz))
    }
}

/// The same timestamps under another zone tag, values untouched (a cast would convert
/// every value through the zone, which is what made `date_trunc` slow).
fn retag(v: &ColumnarValue, tz: Option<Arc<str>>) -> datafusion::error::Result<ColumnarValue> {
    use datafusion::arrow::array::{ArrayRef, AsArray};
    use datafusion::arrow::datatypes::{
        TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    use datafusion::common::ScalarValue;
    Ok(match v {
        ColumnarValue::Array(a) => {
            let a: ArrayRef = match a.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => Arc::new(
                    a.as_primitive::<TimestampSecondType>()
                        .clone()
                        .with_timezone_opt(tz),
                ),
                DataType::Timestamp(TimeUnit::Millisecond, _) => Arc::new(
                    a.as_primitive::<TimestampMillisecondType>()
                        .clone()
                        .with_timezone_opt(tz),
                ),
                DataType::Timestamp(TimeUnit::Microsecond, _) => Arc::new(
                    a.as_primitive::<TimestampMicrosecondType>()
                        .clone()
                        .with_timezone_opt(tz),
                ),
                DataType::Timestamp(TimeUnit::Nanosecond, _) => Arc::new(
                    a.as_primitive::<TimestampNanosecondType>()
                        .clone()
                        .with_timezone_opt(tz),
                ),
                _ => a.clone(),
            };
            ColumnarValue::Array(a)
        }
        ColumnarValue::Scalar(s) => ColumnarValue::Scalar(match s {
            ScalarValue::TimestampSecond(v, _) => ScalarValue::TimestampSecond(*v, tz),
            ScalarValue::TimestampMillisecond(v, _) => ScalarValue::TimestampMillisecond(*v, tz),
            ScalarValue::TimestampMicrosecond(v, _) => ScalarValue::TimestampMicrosecond(*v, tz),
            ScalarValue::TimestampNanosecond(v, _) => ScalarValue::TimestampNanosecond(*v, tz),
            other => other.clone(),
        }),
    })
}

/// Runs one SQL statement over every table under `root` and collects the result.
///
/// See [`register_warehouse`] for what gets registered.
pub async fn query(root: &Path, sql: &str) -> Result<Vec<RecordBatch>, WarehouseError> {
    query_with(root, sql, &[]).await
}

/// [`query`] with more tables beside the warehouse's (e.g. the catalog's patients for a
/// report), each one batch under its name.
pub async fn query_with(
    root: &Path,
    sql: &str,
    tables: &[(&str, RecordBatch)],
) -> Result<Vec<RecordBatch>, WarehouseError> {
    let ctx = session();
    register_warehouse(&ctx, root).await?;
    for (name, batch) in tables {
        let t = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]])?;
        ctx.register_table(TableReference::bare(*name), Arc::new(t))?;
    }
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// The result of a query over the warehouse, batch by batch (memory stays flat however
/// many rows it has): for blocking callers such as `vitalwatch export`. It drives a
/// runtime of its own, so call it from a thread that is not running one.
pub struct QueryStream {
    rt: tokio::runtime::Runtime,
    stream: datafusion::physical_plan::SendableRecordBatchStream,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryStream")
    }
}

impl QueryStream {
    /// Plans `sql` over the warehouse at `root`.
    pub fn new(root: &Path, sql: &str) -> Result<Self, WarehouseError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WarehouseError::io("start a runtime for", root, e))?;
        let stream = rt.block_on(async {
            let ctx = session();
            register_warehouse(&ctx, root).await?;
            Ok::<_, WarehouseError>(ctx.sql(sql).await?.execute_stream().await?)
        })?;
        Ok(QueryStream { rt, stream })
    }

    /// The schema of every batch.
    pub fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.stream.schema()
    }

    /// The next batch, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, WarehouseError> {
        use futures::StreamExt as _;
        Ok(self.rt.block_on(self.stream.next()).transpose()?)
    }
}

/// Registers the warehouse at `root` in a DataFusion session: every subdirectory as a
/// listing table with Hive partition columns `date` (Date32) and `hour` (Int32), and each
/// of the sink's tables that does not exist yet as an empty table of its schema, so
/// `SELECT count(*) FROM alerts` answers 0 on a fresh warehouse instead of failing.
///
/// Tables the sink knows are registered with their declared schema (no inference, so an
/// empty or in-progress-only directory still works); other directories (e.g. `ward_patients`
/// from an export) have their schema inferred and are skipped, with a log line, when
/// they hold no readable file yet.
pub async fn register_warehouse(ctx: &SessionContext, root: &Path) -> Result<(), WarehouseError> {
    // On object storage the local folder is only a spool of files not yet uploaded.
    #[cfg(feature = "s3")]
    if let Some(r) = super::remote::installed() {
        return r.register(ctx).await;
    }
    let options = || {
        ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(partition_cols())
    };
    let mut dirs = Vec::new();
    match std::fs::read_dir(root) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| WarehouseError::io("list", root, e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if entry.path().is_dir() && is_table_name(&name) {
                    dirs.push(name);
                }
            }
        }
        // A warehouse nobody has written to yet is a valid, empty warehouse.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WarehouseError::io("list", root, e)),
    }
    dirs.sort();

    for name in &dirs {
        // A trailing separator makes DataFusion treat the path as a directory prefix.
        let path = format!("{}/", root.join(name).display());
        let reference = TableReference::bare(name.as_str());
        match table_schema(name) {
            Some(schema) => {
                ctx.register_listing_table(reference, &path, options(), Some(schema), None)
                    .await?;
            }
            None => {
                let url = ListingTableUrl::parse(&path)?;
                let opts = options();
                match opts.infer_schema(&ctx.state(), &url).await {
                    Ok(schema) if !schema.fields().is_empty() => {
                        ctx.register_listing_table(reference, &path, opts, Some(schema), None)
                            .await?;
                    }
                    Ok(_) => tracing::debug!(table = %name, "no parquet files yet, skipped"),
                    Err(e) => {
                        tracing::warn!(table = %name, error = %e, "unreadable table skipped")
                    }
                }
            }
        }
    }

    for name in TABLES {
        if dirs.iter().any(|d| d == name) {
            continue;
        }
        if let Some(schema) = table_schema(name) {
            let empty = MemTable::try_new(with_partition_cols(&schema), vec![vec![]])?;
            ctx.register_table(TableReference::bare(name), Arc::new(empty))?;
        }
    }
    Ok(())
}

/// Lower-case letters, digits and `_`, not starting with `_` or `.`: names SQL can use
/// unquoted, and never Spark's `_temporary` or a hidden directory.
fn is_table_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The schema a listing table shows: file columns, then the partition columns.
fn with_partition_cols(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(
        partition_cols()
            .into_iter()
            .map(|(name, ty)| Field::new(name, ty, false)),
    );
    Arc::new(Schema::new(fields))
}

/// How [`format_batches`] renders a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// A boxed text table for terminals.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON lines: one object per row.
    Json,
}

impl OutputFormat {
    /// Parses `table`, `csv`, `json` (also `jsonl`, `ndjson`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" | "pretty" => Some(OutputFormat::Table),
            "csv" => Some(OutputFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(OutputFormat::Json),
            _ => None,
        }
    }
}

/// Renders query results as text.
pub fn format_batches(
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<String, WarehouseError> {
    use datafusion::arrow::{csv, json, util::pretty};

    let mut out = Vec::new();
    match format {
        // An empty result is said in words, not drawn as an empty box.
        OutputFormat::Table if batches.iter().all(|b| b.num_rows() == 0) => {
            return Ok("(0 rows)\n".into());
        }
        OutputFormat::Table => return Ok(pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Csv => {
            // One writer for all batches: the header is written once, before the first.
            let mut w = csv::WriterBuilder::new().with_header(true).build(&mut out);
            for b in batches {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut w = json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    // Both writers produce UTF-8 from UTF-8 input; lossy only guards against surprises.
    Ok(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()))
}

/// Hive DDL for the sink's tables under `root`: `CREATE EXTERNAL TABLE` partitioned by
/// `date`/`hour`, stored as Parquet, then `MSCK REPAIR TABLE` to discover the partitions
/// already on disk. Also valid Spark SQL.
pub fn hive_ddl(root: &Path) -> String {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let mut out = String::new();
    for name in TABLES {
        let Some(schema) = table_schema(name) else {
            continue;
        };
        let columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("  `{}` {}", f.name(), hive_type(f.data_type())))
            .collect();
        // An explicit file: URI: a bare path would be resolved against the cluster's
        // default file system (usually HDFS), not the local disk the sink wrote to.
        let location = format!("file://{}", root.join(name).display()).replace('\'', "\\'");
        out.push_str(&format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{name}` (\n{}\n)\n\
             PARTITIONED BY (`date` DATE, `hour` INT)\n\
             STORED AS PARQUET\n\
             LOCATION '{location}';\n\
             MSCK REPAIR TABLE `{name}`;\n\n",
            columns.join(",\n"),
        ));
    }
    out
}

/// Writes `batches` to a Parquet file at `path` (zstd), under a hidden name first and
/// renamed when complete; returns the rows written.
pub fn write_parquet(batches: &[RecordBatch], path: &Path) -> Result<u64, WarehouseError> {
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::basic::{Compression, ZstdLevel};
    use datafusion::parquet::file::properties::WriterProperties;
    let Some(first) = batches.first() else {
        return Err(WarehouseError::Config("no result to write".into()));
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| WarehouseError::Config(format!("{} has no file name", path.display())))?;
    let tmp = path.with_file_name(format!(".{name}.inprogress"));
    let file = std::fs::File::create(&tmp).map_err(|e| WarehouseError::io("create", &tmp, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(file, first.schema(), Some(props))?;
    let mut rows = 0;
    for b in batches {
        w.write(b)?;
        rows += b.num_rows() as u64;
    }
    w.close()?;
    std::fs::rename(&tmp, path).map_err(|e| WarehouseError::io("rename", path, e))?;
    Ok(rows)
}

/// A SQL engine that reads the warehouse in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlEngine {
    /// Apache Hive: external tables, partitions found by `MSCK REPAIR TABLE`.
    Hive,
    /// Spark SQL: Parquet data-source tables over the same folders.
    Spark,
    /// DuckDB: views over `read_parquet` with Hive partitioning.
    DuckDb,
}

/// The statements that make `engine` see every warehouse table at `root` (the
/// pipeline's tables; Hive's form is [`hive_ddl`]).
pub fn ddl(root: &Path, engine: DdlEngine) -> String {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    if engine == DdlEngine::Hive {
        return hive_ddl(&root);
    }
    let mut out = String::new();
    for name in TABLES {
        let Some(schema) = table_schema(name) else {
            continue;
        };
        let dir = root.join(name).display().to_string().replace('\'', "''");
        match engine {
            DdlEngine::Spark => {
                let mut columns: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| format!("  `{}` {}", f.name(), hive_type(f.data_type())))
                    .collect();
                columns.push("  `date` DATE".into());
                columns.push("  `hour` INT".into());
                out.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS `{name}` (\n{}\n)\n\
                     USING PARQUET\n\
                     PARTITIONED BY (`date`, `hour`)\n\
                     LOCATION 'file://{dir}';\n\
                     MSCK REPAIR TABLE `{name}`;\n\n",
                    columns.join(",\n"),
                ));
            }
            DdlEngine::DuckDb => out.push_str(&format!(
                "CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{dir}/*/*/*.parquet', \
                 hive_partitioning = true, hive_types = {{'date': DATE, 'hour': INTEGER}});\n"
            )),
            DdlEngine::Hive => unreachable!("returned above"),
        }
    }
    out
}

fn hive_type(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 => "STRING",
        DataType::Float64 => "DOUBLE",
        DataType::Int32 => "INT",
        DataType::Int64 => "BIGINT",
        DataType::Boolean => "BOOLEAN",
        DataType::Date32 => "DATE",
        DataType::Timestamp(..) => "TIMESTAMP",
        // Only the types above are written; anything new must be mapped deliberately.
        _ => "STRING",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, TimestampMicrosecondArray};
    use datafusion::arrow::util::display::array_value_to_string;

    /// Our `date_trunc` gives DataFusion's own answers on UTC timestamps, for every
    /// granularity, before and after the epoch, and keeps the zone.
    #[test]
    fn utc_date_trunc_agrees_with_datafusion() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let micros = [
            1_767_282_201_123_456_i64, // 2026-01-01T15:43:21.123456Z
            1_772_438_399_999_999,     // 2026-03-02T07:59:59.999999Z
            -1,                        // 1969-12-31T23:59:59.999999Z
            951_782_400_000_000,       // 2000-02-29T00:00:00Z
        ];
        let ts = TimestampMicrosecondArray::from(micros.to_vec()).with_timezone("UTC");
        let batch = RecordBatch::try_from_iter([("t", Arc::new(ts) as _)]).unwrap();
        for g in [
            "second", "minute", "hour", "day", "week", "month", "quarter", "year",
        ] {
            let sql = format!("SELECT date_trunc('{g}', t) AS d FROM x");
            let run = |ctx: SessionContext| {
                rt.block_on(async {
                    let t = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
                    ctx.register_table("x", Arc::new(t)).unwrap();
                    let out = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                    let col = out[0].column(0).clone();
                    assert_eq!(
                        col.data_type(),
                        &DataType::Timestamp(
                            datafusion::arrow::datatypes::TimeUnit::Microsecond,
                            Some("UTC".into())
                        )
                    );
                    (0..col.len())
                        .map(|i| array_value_to_string(&col, i).unwrap())
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(run(session()), run(SessionContext::new()), "{g}");
        }
    }
}
