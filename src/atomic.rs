//! Atomic whole-file writes, the one way luspo writes a file in place: a temporary sibling, fsync, rename, fsync
//! of the directory. A reader (or a run killed mid-write) sees the old file or the new one, never a part.

use crate::{input_err, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, "", |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| input_err!("{}: cannot write: {e}", path.display()))
    })
}

/// Lets `fill` write the file at a temporary path (whose name ends in `suffix`, e.g. `.png` for encoders that
/// pick the format from the extension), then fsyncs it and renames it to `path` atomically.
pub fn write_with(path: &Path, suffix: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_sibling(path, suffix);
    let res = fill(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| input_err!("{}: cannot write: {e}", path.display()))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    sync_dir(parent(path));
    Ok(())
}

/// Best-effort fsync of a directory (makes a rename durable).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.{name}.tmp-{pid}-{nanos}{suffix}` next to `path`.
fn tmp_sibling(path: &Path, suffix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    parent(path).join(format!(
        ".{name}.tmp-{}-{nanos}{suffix}",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // A failing writer leaves the old file and no temporary behind.
        let e = write_with(&p, ".png", |tmp| {
            assert!(tmp.to_string_lossy().ends_with(".png"));
            std::fs::write(tmp, b"half").unwrap();
            Err(input_err!("encoder failed"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // An unwritable target is one error line naming it.
        let bad = dir.path().join("no/such/dir/x");
        let e = write(&bad, b"x").unwrap_err().to_string();
        assert!(e.contains("no/such/dir") && !e.contains('\n'), "{e}");
    }
}
