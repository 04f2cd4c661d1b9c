//! All-or-nothing output: every file is written under a temporary name in its destination
//! folder and renamed into place once complete, so a failed or interrupted write never leaves a
//! half-written video behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use vdm_core::{Error, Result};

/// `Error::File` naming `path`.
pub(crate) fn file_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// A sibling of `path` that no other writer uses: `.<name>.tmp-<pid>-<n>`.
fn temporary_sibling(path: &Path) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| file_error(path, "not a file name"))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id())))
}

/// The folder `path` will be written in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks, without leaving anything behind, that a file can be created next to `path`.
///
/// # Errors
/// [`Error::File`] naming `path` when its folder is missing or not writable, or when `path`
/// is an existing folder.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(file_error(
            path,
            format!("the folder {} does not exist", dir.display()),
        ));
    }
    let probe = temporary_sibling(path)?;
    File::create(&probe).map_err(|e| file_error(path, format!("cannot write here: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `path` through `write`, under a temporary name renamed into place on success (and
/// removed on failure).
///
/// # Errors
/// [`Error::File`] naming `path` for I/O errors; `write`'s own errors.
pub(crate) fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    if path.is_dir() {
        return Err(file_error(path, "is a folder"));
    }
    let tmp = temporary_sibling(path)?;
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| file_error(path, e))?;
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        out.flush().map_err(|e| file_error(path, e))?;
        out.get_ref().sync_all().map_err(|e| file_error(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fills folder `dir` through `write` (given a temporary folder to write into); the files are
/// moved into `dir` (created if needed, existing files of the same names replaced) only when
/// `write` succeeded.
///
/// # Errors
/// [`Error::File`] naming `dir` when it exists as a file or cannot be created; `write`'s own
/// errors.
pub(crate) fn write_dir(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(file_error(dir, "exists and is not a folder"));
    }
    let tmp = temporary_sibling(dir)?;
    std::fs::create_dir(&tmp).map_err(|e| file_error(dir, e))?;
    let result = write(&tmp).and_then(|()| {
        if !dir.exists() {
            return std::fs::rename(&tmp, dir).map_err(|e| file_error(dir, e));
        }
        for entry in std::fs::read_dir(&tmp).map_err(|e| file_error(dir, e))? {
            let entry = entry.map_err(|e| file_error(dir, e))?;
            std::fs::rename(entry.path(), dir.join(entry.file_name()))
                .map_err(|e| file_error(dir, e))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
