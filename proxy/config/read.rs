//! Reading the files a config names (the config itself, the admin token, certificates and
//! keys, the rollout state file): only regular files, and at most [`MAX_FILE_BYTES`] of them.
//!
//! A FIFO would block the reader until something writes to it, `/dev/zero` would fill memory,
//! a directory is an error only after it was opened: each is refused by what the opened file
//! *is* (`fstat`), and opening never waits (`O_NONBLOCK`, which a regular file ignores). A read
//! that stalls anyway (a hung network mount) is the caller's to bound: the reloader runs these
//! reads on a thread of their own with a deadline (see `reload::loader`).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest file read for a config: 16 MiB (a large config is well under 1 MiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The bytes of the regular file at `path` (symlinks followed), or why not, naming the path.
pub fn read_regular(path: &Path) -> Result<Vec<u8>, String> {
    read_capped(path, MAX_FILE_BYTES)
}

/// [`read_regular`], with `None` when nothing is at `path`.
pub fn read_regular_if_any(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        opened => read_opened(path, opened, MAX_FILE_BYTES).map(Some),
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    read_opened(path, open(path), cap)
}

fn read_opened(path: &Path, opened: std::io::Result<File>, cap: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = opened.map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    let kind = meta.file_type();
    let not_regular = if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(what) = not_regular {
        return Err(format!(
            "`{shown}` is {what}, not a regular file; switchyard reads its config, token, certificates and rollout state only from regular files"
        ));
    }
    if meta.len() > cap {
        return Err(too_large(path, cap));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow after the stat: never read more than the cap allows.
    File::take(file, cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(too_large(path, cap));
    }
    Ok(bytes)
}

fn too_large(path: &Path, cap: u64) -> String {
    format!(
        "`{}` is larger than {} MiB, the most switchyard reads for a config, token, certificate or rollout state file",
        path.display(),
        cap / (1024 * 1024)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sy-read-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn regular_files_are_read_through_symlinks() {
        let d = dir("regular");
        std::fs::write(d.0.join("a.yaml"), "x: 1\n").unwrap();
        std::os::unix::fs::symlink(d.0.join("a.yaml"), d.0.join("link.yaml")).unwrap();
        assert_eq!(read_regular(&d.0.join("link.yaml")).unwrap(), b"x: 1\n");
    }

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_without_blocking() {
        let d = dir("special");
        let fifo = d.0.join("fifo.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Nothing ever writes to it: a blocking open would hang this test.
        let e = read_regular(&fifo).unwrap_err();
        assert!(
            e.contains("is a FIFO (named pipe), not a regular file"),
            "{e}"
        );
        std::os::unix::fs::symlink("/dev/zero", d.0.join("zero.yaml")).unwrap();
        let e = read_regular(&d.0.join("zero.yaml")).unwrap_err();
        assert!(e.contains("is a character device"), "{e}");
        let e = read_regular(&d.0).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let e = read_regular(&d.0.join("missing")).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    }

    #[test]
    fn files_over_the_cap_are_refused() {
        let d = dir("cap");
        let p = d.0.join("big.yaml");
        std::fs::write(&p, vec![b'#'; 2048]).unwrap();
        assert!(read_capped(&p, 2048).is_ok());
        std::fs::write(&p, vec![b'#'; 2049]).unwrap();
        let e = read_capped(&p, 2048).unwrap_err();
        assert!(e.contains("is larger than"), "{e}");
    }
}
