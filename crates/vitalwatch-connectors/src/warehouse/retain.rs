//! Retention: dropping whole days of the warehouse that are past their keep-by date
//! (`vitalwatch warehouse retain --older-than 90d`).
//!
//! Where it sits: beside the writer, on the folders it leaves. A day partition
//! (`<table>/date=YYYY-MM-DD/`) older than the cut-off is first renamed to a hidden name
//! (readers stop seeing it at once, and a day is never half there), then removed; a
//! hidden `.retain-*` folder left by a crash in between is removed by the next run. The
//! live writer only ever adds files, so retention can run beside `run`.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::WarehouseError;

/// What [`retain`] removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    /// `(table, date)` of each day partition removed.
    pub partitions: Vec<(String, NaiveDate)>,
    /// Files in them.
    pub files: u64,
    /// Bytes in them.
    pub bytes: u64,
}

fn size(dir: &Path, files: &mut u64, bytes: &mut u64) -> Result<(), WarehouseError> {
    for e in fs::read_dir(dir).map_err(|e| WarehouseError::io("list", dir, e))? {
        let e = e.map_err(|e| WarehouseError::io("list", dir, e))?;
        let md = e
            .metadata()
            .map_err(|x| WarehouseError::io("stat", e.path(), x))?;
        if md.is_dir() {
            size(&e.path(), files, bytes)?;
        } else {
            *files += 1;
            *bytes += md.len();
        }
    }
    Ok(())
}

/// Removes every day partition dated before `cutoff` from `table` (every table with
/// `None`) under `root`; with `dry_run`, only says what it would remove.
pub fn retain(
    root: &Path,
    cutoff: NaiveDate,
    table: Option<&str>,
    dry_run: bool,
) -> Result<Retained, WarehouseError> {
    #[cfg(feature = "s3")]
    if let Some(r) = super::remote::installed() {
        return r.retain(cutoff, table, dry_run);
    }
    let mut out = Retained::default();
    for dir in table_dirs(root, table)? {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let mut days: Vec<(NaiveDate, PathBuf)> = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| WarehouseError::io("list", &dir, e))? {
            let e = e.map_err(|e| WarehouseError::io("list", &dir, e))?;
            let file_name = e.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            // A removal a crash interrupted: finish it.
            if n.starts_with(".retain-") && !dry_run {
                fs::remove_dir_all(e.path())
                    .map_err(|x| WarehouseError::io("remove", e.path(), x))?;
                continue;
            }
            if let Some(d) = super::schema::partition_day(n)
                && d < cutoff
            {
                days.push((d, e.path()));
            }
        }
        days.sort();
        for (d, path) in days {
            size(&path, &mut out.files, &mut out.bytes)?;
            if !dry_run {
                let hidden = dir.join(format!(".retain-date={d}"));
                fs::rename(&path, &hidden).map_err(|e| WarehouseError::io("rename", &path, e))?;
                fs::remove_dir_all(&hidden)
                    .map_err(|e| WarehouseError::io("remove", &hidden, e))?;
            }
            out.partitions.push((name.clone(), d));
        }
    }
    Ok(out)
}

/// The table folders under `root` (only `table`'s with `Some`): none for a warehouse
/// nobody has written to yet.
pub(crate) fn table_dirs(root: &Path, table: Option<&str>) -> Result<Vec<PathBuf>, WarehouseError> {
    match fs::read_dir(root) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && table.is_none_or(|t| t == name)
            })
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(WarehouseError::io("list", root, e)),
    }
}
