//! Compaction: many small files of an hour partition merged into one
//! (`vitalwatch warehouse compact`).
//!
//! Where it sits: beside the writer, on the folders of past days it no longer writes to.
//! A live stream leaves one file per `warehouse.roll_interval` per partition (60 an hour);
//! readers pay per file, so finished hours are merged. Readers never see a row twice or
//! miss one: the merged file is written into a hidden sibling folder
//! (`.hour=H.compact-…`), with a manifest beside it naming the files it replaces, and the two
//! folders are swapped in one atomic step (`renameat2(RENAME_EXCHANGE)`). A file a writer
//! added to the partition meanwhile is moved back into the swapped-in folder; the old files
//! are then removed. A crash at any point is finished by the next compaction
//! ([`recover`]): before the swap the hidden folder holds only the new file (dropped);
//! after it, the old files and the manifest say which of them are merged (dropped) and
//! which arrived late (moved back).

use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::WarehouseError;

/// What [`compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Hour partitions merged.
    pub partitions: u64,
    /// Files merged away (replaced by one file each partition).
    pub files_in: u64,
    /// Rows rewritten.
    pub rows: u64,
}

/// The suffix of the manifest beside a hidden folder: the merged file's name, then the
/// names of the files it replaces, one a line.
const MANIFEST: &str = ".manifest";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WarehouseError + 'a {
    move |e| WarehouseError::io(op, path, e)
}

/// The visible Parquet files of a folder, sorted.
fn parquet_files(dir: &Path) -> Result<Vec<String>, WarehouseError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        if let Some(n) = e.file_name().to_str()
            && n.ends_with(".parquet")
            && !n.starts_with('.')
        {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Finishes or undoes compactions a crash interrupted, under `date_dir`.
pub(crate) fn recover(date_dir: &Path) -> Result<(), WarehouseError> {
    for e in fs::read_dir(date_dir).map_err(io("list", date_dir))? {
        let e = e.map_err(io("list", date_dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix('.') else {
            continue;
        };
        let Some((visible, _)) = rest.split_once(".compact-") else {
            continue;
        };
        if name.ends_with(MANIFEST) {
            continue;
        }
        let hidden = e.path();
        let manifest_path = date_dir.join(format!("{name}{MANIFEST}"));
        let manifest = fs::read_to_string(&manifest_path).unwrap_or_default();
        let mut lines = manifest.lines();
        let new_file = lines.next().unwrap_or("");
        let merged: Vec<&str> = lines.collect();
        let visible_dir = date_dir.join(visible);
        let swapped = !new_file.is_empty() && visible_dir.join(new_file).is_file();
        if swapped {
            // The hidden folder holds the old files: keep what arrived late.
            for f in parquet_files(&hidden)? {
                if !merged.contains(&f.as_str()) {
                    fs::rename(hidden.join(&f), visible_dir.join(&f))
                        .map_err(io("rename", &hidden))?;
                }
            }
        }
        fs::remove_dir_all(&hidden).map_err(io("remove", &hidden))?;
        let _ = fs::remove_file(&manifest_path);
    }
    Ok(())
}

/// Merges every hour partition of `table` (every table with `None`) dated before
/// `before` that has more than one file into one file.
pub fn compact(
    root: &Path,
    before: NaiveDate,
    table: Option<&str>,
    dry_run: bool,
) -> Result<Compacted, WarehouseError> {
    #[cfg(feature = "s3")]
    if let Some(r) = super::remote::installed() {
        return r.compact(before, table, dry_run);
    }
    let mut out = Compacted::default();
    let mut jobs = Vec::new();
    for tdir in super::retain::table_dirs(root, table)? {
        let mut days: Vec<PathBuf> = Vec::new();
        for e in fs::read_dir(&tdir).map_err(io("list", &tdir))? {
            let p = e.map_err(io("list", &tdir))?.path();
            let old_enough = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(super::schema::partition_day)
                .is_some_and(|d| d < before);
            if old_enough {
                days.push(p);
            }
        }
        days.sort();
        for day in days {
            if !dry_run {
                recover(&day)?;
            }
            let mut hours: Vec<PathBuf> = fs::read_dir(&day)
                .map_err(io("list", &day))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("hour="))
                })
                .collect();
            hours.sort();
            for hour in hours {
                let files = parquet_files(&hour)?;
                if files.len() < 2 {
                    continue;
                }
                out.partitions += 1;
                out.files_in += files.len() as u64;
                jobs.push((day.clone(), hour, files));
            }
        }
    }
    if !dry_run {
        out.rows = merge_all(&jobs)?;
    }
    Ok(out)
}

/// Merges the partitions of `jobs` on as many threads as there are cores (at most 4):
/// each partition is independent (its own hidden folder and swap), and decoding and
/// zstd-encoding is CPU-bound. Returns the rows rewritten, or the first error (the
/// partitions merged before it stay merged; the rest are left for the next run).
fn merge_all(jobs: &[(PathBuf, PathBuf, Vec<String>)]) -> Result<u64, WarehouseError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut rows = 0u64;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= jobs.len() || failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return Ok(rows);
                        }
                        let (day, hour, files) = &jobs[i];
                        match merge(day, hour, files) {
                            Ok(n) => rows += n,
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        let mut first = None;
        for w in workers {
            match w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                Ok(n) => total += n,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(total), Err)
    })
}

/// Merges `files` of the partition folder `hour` (under `day`) into one and swaps it in.
fn merge(day: &Path, hour: &Path, files: &[String]) -> Result<u64, WarehouseError> {
    let visible = hour
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("hour")
        .to_owned();
    let micros = chrono::Utc::now().timestamp_micros();
    let hidden = day.join(format!(
        ".{visible}.compact-{micros}-{}",
        std::process::id()
    ));
    fs::create_dir(&hidden).map_err(io("create", &hidden))?;
    let new_name = format!("part-compact-{micros}-{}.parquet", std::process::id());
    let new_path = hidden.join(&new_name);
    let inputs: Vec<PathBuf> = files.iter().map(|f| hour.join(f)).collect();
    let Some(rows) = merge_files(&inputs, &new_path)? else {
        fs::remove_dir_all(&hidden).map_err(io("remove", &hidden))?;
        tracing::warn!(partition = %hour.display(), "files with different columns: partition left as it is");
        return Ok(0);
    };
    let mut manifest = new_name.clone();
    for f in files {
        manifest.push('\n');
        manifest.push_str(f);
    }
    let manifest_path = day.join(format!(
        ".{visible}.compact-{micros}-{}{MANIFEST}",
        std::process::id()
    ));
    fs::write(&manifest_path, manifest).map_err(io("write", &manifest_path))?;
    // The new file moves into place with its folder: readers see the old files or the
    // merged one, never both, never neither.
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        hour,
        rustix::fs::CWD,
        &hidden,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| WarehouseError::io("swap", hour, e.into()))?;
    // `hidden` now holds the old files: one a writer added meanwhile goes back.
    for f in parquet_files(&hidden)? {
        if !files.contains(&f) {
            fs::rename(hidden.join(&f), hour.join(&f)).map_err(io("rename", &hidden))?;
        }
    }
    fs::remove_dir_all(&hidden).map_err(io("remove", &hidden))?;
    fs::remove_file(&manifest_path).map_err(io("remove", &manifest_path))?;
    Ok(rows)
}

/// Writes the rows of `inputs` (Parquet files of one table), in order, into one new file
/// `out` (zstd, row groups of 128 Ki rows) and syncs it; returns the row count, or `None`
/// (and no file) when the inputs do not share one schema (an import with other columns:
/// that partition is left as it is, not the data changed).
pub(crate) fn merge_files(inputs: &[PathBuf], out: &Path) -> Result<Option<u64>, WarehouseError> {
    let mut rows = 0u64;
    let mut writer: Option<ArrowWriter<fs::File>> = None;
    let mut schema = None;
    for path in inputs {
        let file = fs::File::open(path).map_err(io("open", path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(65_536)
            .build()?;
        for batch in reader {
            let batch = batch?;
            let w = match &mut writer {
                Some(w) => w,
                None => {
                    let props = WriterProperties::builder()
                        .set_compression(Compression::ZSTD(ZstdLevel::default()))
                        .set_max_row_group_row_count(Some(128 * 1024))
                        .build();
                    let f = fs::File::create(out).map_err(io("create", out))?;
                    schema = Some(batch.schema());
                    writer.insert(ArrowWriter::try_new(f, batch.schema(), Some(props))?)
                }
            };
            if schema.as_ref() != Some(&batch.schema()) {
                drop(writer);
                let _ = fs::remove_file(out);
                return Ok(None);
            }
            rows += batch.num_rows() as u64;
            w.write(&batch)?;
        }
    }
    if let Some(w) = writer {
        let f = w.into_inner()?;
        f.sync_all().map_err(io("sync", out))?;
    }
    Ok(Some(rows))
}
