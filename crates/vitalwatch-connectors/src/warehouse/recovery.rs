//! Crash recovery of the warehouse: what a restart removes so nothing is archived twice.
//!
//! Where it sits: run once when a pipeline starts, before any source sends, and for a
//! resumable source before it resumes. The data directory's lock guarantees no other
//! writer is active.
//!
//! The mechanism (chosen over a dedup index, which would cost a lookup per reading at a
//! million readings a second, and over deterministic file contents, which a batch boundary
//! moved by a crash would break): a resumable source (a replayed file; Kafka later) is a
//! *stream* with a numbered position that it commits to the alert store only after a
//! checkpoint made everything before it durable. Every file published for that stream is
//! named `part-<stream>-p<position>-…`, the position of the checkpoint that published it.
//! After a crash, files past the committed position hold rows the source will send again,
//! so they are removed before it does; files at or before it are kept. In-progress and
//! staged files (hidden names) were never published and are removed too. The outbox's
//! alert archive uses the same rule with the outbox sequence as its position.

use std::fs;
use std::path::Path;

use vitalwatch_core::alert::stable_hash;

use super::WarehouseError;

/// The file-name tag of a checkpoint of `stream` at `position`: pass it to
/// [`ParquetSink::checkpoint`](super::ParquetSink::checkpoint). `stream` must be a short
/// name of letters and digits (no `-`).
pub fn position_tag(stream: &str, position: u64) -> String {
    format!("{stream}-p{position:012}")
}

/// A stable, short stream name for a source (16 hex digits of a stable hash of its
/// name): the same source gets the same stream in every run.
pub fn stream_id(source: &str) -> String {
    format!("s{:016x}", stable_hash(&[source.as_bytes()]))
}

/// The checkpoint position in a published file's name, if it belongs to `stream`.
pub(crate) fn position_of(file_name: &str, stream: &str) -> Option<u64> {
    let rest = file_name
        .strip_prefix("part-")?
        .strip_prefix(stream)?
        .strip_prefix("-p")?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// What a recovery pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Published files past their stream's committed position.
    pub uncommitted: u64,
    /// Hidden in-progress or staged files of a run that ended without publishing them.
    pub unpublished: u64,
}

/// Removes the files of `stream` published after `committed` (every one of them with
/// `None`: the source starts over), in every table under `root`.
pub fn remove_uncommitted(
    root: &Path,
    stream: &str,
    committed: Option<u64>,
) -> Result<Removed, WarehouseError> {
    let mut removed = Removed::default();
    walk(root, &mut |path, name| {
        if let Some(p) = position_of(name, stream)
            && committed.is_none_or(|c| p > c)
        {
            fs::remove_file(path).map_err(|e| WarehouseError::io("remove", path, e))?;
            removed.uncommitted += 1;
        }
        Ok(())
    })?;
    // Files already moved to object storage follow the same rule there, before the
    // uploader sends anything new.
    #[cfg(feature = "s3")]
    if let Some(r) = super::remote::installed() {
        r.remove_uncommitted(stream, committed);
    }
    Ok(removed)
}

/// Removes every hidden in-progress or staged file under `root`: the run that wrote them
/// ended before publishing them. Only call it while holding the data directory's lock.
pub fn remove_unpublished(root: &Path) -> Result<Removed, WarehouseError> {
    let mut removed = Removed::default();
    walk(root, &mut |path, name| {
        if name.starts_with(".part-") && name.ends_with(".inprogress") {
            fs::remove_file(path).map_err(|e| WarehouseError::io("remove", path, e))?;
            removed.unpublished += 1;
        }
        Ok(())
    })?;
    Ok(removed)
}

/// Calls `f` with every file below `dir` (tables are three levels deep; any depth works).
pub(crate) fn walk(
    dir: &Path,
    f: &mut dyn FnMut(&Path, &str) -> Result<(), WarehouseError>,
) -> Result<(), WarehouseError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(WarehouseError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| WarehouseError::io("list", dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| WarehouseError::io("stat", &path, e))?;
        if kind.is_dir() {
            walk(&path, f)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            f(&path, name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_files_past_the_committed_position_of_their_stream() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("vitals/date=2026-01-01/hour=3");
        fs::create_dir_all(&part).unwrap();
        let a = stream_id("file:/data/a.jsonl");
        let b = stream_id("file:/data/b.jsonl");
        assert_ne!(a, b);
        assert_eq!(a, stream_id("file:/data/a.jsonl"), "stable across calls");
        let names = [
            format!("part-{}-1-000001.parquet", position_tag(&a, 1)),
            format!("part-{}-1-000002.parquet", position_tag(&a, 2)),
            format!("part-{}-1-000003.parquet", position_tag(&a, 3)),
            format!("part-{}-1-000004.parquet", position_tag(&b, 9)),
            "part-1700000000-42-000005.parquet".to_owned(),
            ".part-1700000000-42-000006.parquet.inprogress".to_owned(),
        ];
        for n in &names {
            fs::write(part.join(n), b"x").unwrap();
        }
        let r = remove_uncommitted(dir.path(), &a, Some(2)).unwrap();
        assert_eq!(r.uncommitted, 1);
        let r = remove_unpublished(dir.path()).unwrap();
        assert_eq!(r.unpublished, 1);
        let mut left: Vec<String> = fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            names[0].clone(),
            names[1].clone(),
            names[3].clone(),
            names[4].clone(),
        ];
        want.sort();
        assert_eq!(left, want);
        // Starting over removes every file of the stream, and only of that stream.
        let r = remove_uncommitted(dir.path(), &a, None).unwrap();
        assert_eq!(r.uncommitted, 2);
        assert_eq!(fs::read_dir(&part).unwrap().count(), 2);
    }
}
