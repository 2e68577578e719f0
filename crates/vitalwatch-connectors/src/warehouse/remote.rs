//! The warehouse on S3-compatible object storage (`warehouse.location = "s3://bucket/prefix"`).
//!
//! Where it sits: behind the local writer. The sink keeps writing Hive-layout files into
//! the data directory's `warehouse/`, which becomes a spool; [`ObjectWarehouse::upload`]
//! (every few seconds in `run` and `replay`, and once more when they stop) moves each
//! *published* file to the same relative key under the prefix with a multipart upload,
//! which S3 keeps invisible until it completes, then deletes the local copy. So:
//! - a reader of the bucket never sees a partial file;
//! - a crash before an upload completes leaves the file in the spool (the incomplete
//!   upload stays invisible) and the next upload sends it again under the same key;
//! - a crash after the upload but before the local delete sends the same bytes to the
//!   same key again: nothing doubles;
//! - the local crash rules carry over: files a restart must remove (past a stream's
//!   committed position, see [`super::recovery`]) are removed from the bucket as well.
//!
//! Reads (`query`, `history`, `report`, `export`) go to the bucket (DataFusion with the
//! same object store); `compact` and `retain` work on the bucket. One warehouse per
//! process: the binary installs it once with [`install`] at start-up.
//!
//! Compaction on a bucket cannot swap folders atomically as on a POSIX file system: the
//! merged object is written first, then the files it replaces are deleted, so for that
//! moment a reader listing the partition can see its rows twice. Compact finished days
//! when no report runs (the default `--before` is today), as with Hive or Spark on S3.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::NaiveDate;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use super::WarehouseError;
use super::compact::{Compacted, merge_files};
use super::retain::Retained;
use super::schema::{TABLES, partition_cols, table_schema};

/// Where the warehouse lives on S3 and how to reach it. Credentials never come from the
/// config file: object_store's AWS chain takes `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
/// (`AWS_SESSION_TOKEN`), else a web identity token (`AWS_WEB_IDENTITY_TOKEN_FILE`, EKS),
/// the ECS task role, or EC2 instance metadata. Shared-credentials profiles
/// (`~/.aws/credentials`) are not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub location: String,
    /// An S3-compatible endpoint (MinIO, moto, Ceph), e.g. `http://127.0.0.1:5000`;
    /// empty for AWS itself. Plain `http://` is allowed only when spelled out here.
    pub endpoint: String,
    /// The bucket's region; empty takes `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    pub region: String,
}

/// A warehouse in an S3 bucket.
#[derive(Clone)]
pub struct ObjectWarehouse {
    bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    prefix: String,
    store: Arc<dyn ObjectStore>,
    /// Recovery's removals waiting for the bucket: `(stream, committed position)`, applied
    /// in order by the next [`ObjectWarehouse::upload`] before it sends any file, so a
    /// store that is down at start-up never stops a source or a notifier from starting.
    pending: Arc<std::sync::Mutex<Vec<Removal>>>,
}

/// A queued recovery removal: a stream's files past its committed position (all of them
/// with `None`).
type Removal = (String, Option<u64>);

impl std::fmt::Debug for ObjectWarehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectWarehouse({})", self.url())
    }
}

/// What an upload moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Files uploaded (and removed from the spool).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

static INSTALLED: OnceLock<ObjectWarehouse> = OnceLock::new();

/// Makes `w` this process's warehouse: every read, recovery, compaction and retention
/// goes to it from now on. A second call is ignored (one warehouse per process).
pub fn install(w: ObjectWarehouse) {
    let _ = INSTALLED.set(w);
}

/// The installed object-storage warehouse, if any.
pub fn installed() -> Option<&'static ObjectWarehouse> {
    INSTALLED.get()
}

fn remote(e: impl std::fmt::Display) -> WarehouseError {
    WarehouseError::Remote(e.to_string())
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own: callers are
/// blocking code that may itself be running on some other runtime's thread.
fn block_on<F: Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime starts")
                .block_on(f)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl ObjectWarehouse {
    /// Connects (lazily: nothing is sent until the first request) to the bucket of
    /// `s.location`.
    pub fn s3(s: &S3Settings) -> Result<Self, WarehouseError> {
        let rest = s.location.strip_prefix("s3://").ok_or_else(|| {
            WarehouseError::Config(format!(
                "warehouse.location = {:?}: expected s3://bucket[/prefix]",
                s.location
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(WarehouseError::Config(format!(
                "warehouse.location = {:?}: the bucket name is missing",
                s.location
            )));
        }
        // Few, short retries: a file that cannot go now waits in the spool and the next
        // tick sends it; the client's default (10 retries over up to 3 minutes) would hold
        // a stopping pipeline that long when the store is down.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(15),
            ..Default::default()
        };
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        if !s.region.is_empty() {
            b = b.with_region(&s.region);
        }
        if !s.endpoint.is_empty() {
            b = b
                .with_endpoint(&s.endpoint)
                .with_allow_http(s.endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(remote)?;
        Ok(ObjectWarehouse {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            store: Arc::new(store),
            pending: Arc::default(),
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        match self.prefix.is_empty() {
            true => format!("s3://{}", self.bucket),
            false => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }

    fn key(&self, rel: &str) -> Key {
        match self.prefix.is_empty() {
            true => Key::from(rel),
            false => Key::from(format!("{}/{rel}", self.prefix)),
        }
    }

    /// Every object under `rel` (a table, or the whole warehouse with ""), with its key
    /// relative to the prefix, and its size.
    async fn list(&self, rel: &str) -> Result<Vec<(String, u64)>, WarehouseError> {
        let base = self.key(rel);
        let strip = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(remote)?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let k = m.location.to_string();
                (k.strip_prefix(&strip).unwrap_or(&k).to_owned(), m.size)
            })
            .collect())
    }

    /// Uploads one local file to `rel` in 8 MiB parts, at most four in flight.
    async fn put_file(&self, path: &Path, rel: &str) -> Result<u64, WarehouseError> {
        let upload = self
            .store
            .put_multipart(&self.key(rel))
            .await
            .map_err(remote)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let sent = async {
            let mut f =
                std::fs::File::open(path).map_err(|e| WarehouseError::io("open", path, e))?;
            let mut buf = vec![0u8; 8 << 20];
            let mut total = 0u64;
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| WarehouseError::io("read", path, e))?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4).await.map_err(remote)?;
                w.write(&buf[..n]);
                total += n as u64;
            }
            Ok::<_, WarehouseError>(total)
        }
        .await;
        match sent {
            Ok(total) => {
                w.finish().await.map_err(remote)?;
                Ok(total)
            }
            Err(e) => {
                // The parts sent so far are discarded; nothing became visible.
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Moves every published file of the local spool `root` to the bucket (same relative
    /// key) and deletes the local copy once its upload completed.
    pub fn upload(&self, root: &Path) -> Result<Uploaded, WarehouseError> {
        let mut files = Vec::new();
        super::recovery::walk(root, &mut |path, name| {
            if name.starts_with("part-") && name.ends_with(".parquet") {
                let rel = path.strip_prefix(root).unwrap_or(path);
                // Only table/date=…/hour=…/file: never a compaction's hidden folder.
                let parts: Vec<_> = rel.iter().filter_map(|p| p.to_str()).collect();
                if parts.len() == 4 && parts[1..3].iter().all(|p| !p.starts_with('.')) {
                    files.push((path.to_path_buf(), parts.join("/")));
                }
            }
            Ok(())
        })?;
        files.sort();
        // Removals first: a file re-written after a restart has a position past the
        // committed one too, and must not be sent before the old ones are gone.
        self.apply_pending()?;
        block_on(async {
            let mut done = Uploaded::default();
            for (path, rel) in &files {
                done.bytes += self.put_file(path, rel).await?;
                std::fs::remove_file(path).map_err(|e| WarehouseError::io("remove", path, e))?;
                done.files += 1;
            }
            Ok(done)
        })
    }

    /// Deletes the objects whose file name `doomed` picks (relative key, file name);
    /// returns how many.
    fn delete_where(
        &self,
        doomed: impl Fn(&str, &str) -> bool + Send + Sync,
    ) -> Result<u64, WarehouseError> {
        block_on(async {
            let mut n = 0;
            for (rel, _) in self.list("").await? {
                let name = rel.rsplit('/').next().unwrap_or(&rel);
                if doomed(&rel, name) {
                    self.store.delete(&self.key(&rel)).await.map_err(remote)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Deletes every object named `file_name` (in any partition); returns how many.
    pub fn remove_named(&self, file_name: &str) -> Result<u64, WarehouseError> {
        self.delete_where(|_, name| name == file_name)
    }

    /// The bucket's side of [`super::recovery::remove_uncommitted`]: queued for the next
    /// upload (which applies it before sending anything), so it needs no bucket now.
    pub(crate) fn remove_uncommitted(&self, stream: &str, committed: Option<u64>) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((stream.to_owned(), committed));
    }

    /// Applies the queued removals in order; those not applied (the store failed) stay
    /// queued.
    fn apply_pending(&self) -> Result<(), WarehouseError> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((stream, committed)) = pending.first().cloned() {
            let removed = self.delete_where(|_, name| {
                super::recovery::position_of(name, &stream)
                    .is_some_and(|p| committed.is_none_or(|c| p > c))
            })?;
            if removed > 0 {
                tracing::info!(files = removed, %stream, "removed uncommitted files from the bucket");
            }
            pending.remove(0);
        }
        Ok(())
    }

    /// Registers every table of the bucket in `ctx` (see [`super::register_warehouse`]).
    pub(crate) async fn register(&self, ctx: &SessionContext) -> Result<(), WarehouseError> {
        let url = ObjectStoreUrl::parse(format!("s3://{}", self.bucket))?;
        ctx.register_object_store(url.as_ref(), self.store.clone());
        for name in TABLES {
            let Some(schema) = table_schema(name) else {
                continue;
            };
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(partition_cols());
            ctx.register_listing_table(
                name,
                format!("{}/{name}/", self.url()),
                options,
                Some(schema),
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Object keys per `(table, date, hour folder)`, for the tables in scope.
    async fn partitions(
        &self,
        table: Option<&str>,
    ) -> Result<Vec<((String, NaiveDate, String), Vec<(String, u64)>)>, WarehouseError> {
        let mut out: std::collections::BTreeMap<_, Vec<(String, u64)>> = Default::default();
        for t in TABLES.iter().filter(|t| table.is_none_or(|x| x == **t)) {
            for (rel, size) in self.list(t).await? {
                let parts: Vec<&str> = rel.split('/').collect();
                let [tbl, day, hour, file] = parts[..] else {
                    continue;
                };
                let Some(date) = super::schema::partition_day(day) else {
                    continue;
                };
                if file.ends_with(".parquet") {
                    out.entry((tbl.to_owned(), date, hour.to_owned()))
                        .or_default()
                        .push((rel.clone(), size));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The bucket's `warehouse compact`: each hour partition dated before `before` with
    /// more than one object becomes one object (written before the old ones are deleted).
    pub fn compact(
        &self,
        before: NaiveDate,
        table: Option<&str>,
        dry_run: bool,
    ) -> Result<Compacted, WarehouseError> {
        let scratch = tempfile_dir()?;
        let result = block_on(async {
            let mut out = Compacted::default();
            for ((tbl, date, hour), mut files) in self.partitions(table).await? {
                if date >= before || files.len() < 2 {
                    continue;
                }
                files.sort();
                out.partitions += 1;
                out.files_in += files.len() as u64;
                if dry_run {
                    continue;
                }
                let mut inputs = Vec::new();
                for (i, (rel, _)) in files.iter().enumerate() {
                    let bytes = self
                        .store
                        .get(&self.key(rel))
                        .await
                        .map_err(remote)?
                        .bytes()
                        .await
                        .map_err(remote)?;
                    let p = scratch.join(format!("in-{i}.parquet"));
                    std::fs::write(&p, &bytes).map_err(|e| WarehouseError::io("write", &p, e))?;
                    inputs.push(p);
                }
                let merged = scratch.join("merged.parquet");
                let Some(rows) = merge_files(&inputs, &merged)? else {
                    tracing::warn!(table = %tbl, %date, %hour, "objects with different columns: partition left as it is");
                    continue;
                };
                let micros = chrono::Utc::now().timestamp_micros();
                let name = format!(
                    "{tbl}/date={date}/{hour}/part-compact-{micros}-{}.parquet",
                    std::process::id()
                );
                self.put_file(&merged, &name).await?;
                for (rel, _) in &files {
                    self.store.delete(&self.key(rel)).await.map_err(remote)?;
                }
                for p in inputs.iter().chain([&merged]) {
                    let _ = std::fs::remove_file(p);
                }
                out.rows += rows;
            }
            Ok(out)
        });
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// The bucket's `warehouse retain`: deletes every object of the days before `cutoff`.
    pub fn retain(
        &self,
        cutoff: NaiveDate,
        table: Option<&str>,
        dry_run: bool,
    ) -> Result<Retained, WarehouseError> {
        block_on(async {
            let mut out = Retained::default();
            for ((tbl, date, _), files) in self.partitions(table).await? {
                if date >= cutoff {
                    continue;
                }
                if !out.partitions.contains(&(tbl.clone(), date)) {
                    out.partitions.push((tbl.clone(), date));
                }
                for (rel, size) in files {
                    out.files += 1;
                    out.bytes += size;
                    if !dry_run {
                        self.store.delete(&self.key(&rel)).await.map_err(remote)?;
                    }
                }
            }
            Ok(out)
        })
    }
}

/// A scratch folder for compaction's downloads.
fn tempfile_dir() -> Result<PathBuf, WarehouseError> {
    let dir = std::env::temp_dir().join(format!(
        "vitalwatch-compact-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| WarehouseError::io("create", &dir, e))?;
    Ok(dir)
}
