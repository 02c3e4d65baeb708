//! The log directory on a real file system: its lock, and making and
//! removing segment files for [`Log`](super::log::Log).
//!
//! Everything here is a quick metadata operation done on the loop's thread
//! (open, preallocate, rename, unlink); the writes and syncs of records, which can
//! take milliseconds, run as operations of the loop's back end (see
//! [`super::flush`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::log::{FileRef, SegmentFiles};
use super::recover::SegmentId;
use super::segment;

/// Bytes written at a time when a file system cannot preallocate
/// (`fallocate` unsupported) and zeros are written instead.
const ZERO_FILL_BYTES: usize = 1 << 20;

/// The directory's lock file, held for the life of the process, as
/// beanstalkd holds it (a whole-file `fcntl` write lock on `DIR/lock`), so
/// that neither another runnerbean nor a C beanstalkd can use the same
/// directory at the same time.
pub struct DirLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock.
    Held,
    Io(io::Error),
}

/// Creates `dir` if it does not exist (with its parents), checks that it is
/// a directory we can write, and takes its lock.
pub fn lock(dir: &Path) -> Result<DirLock, LockError> {
    std::fs::create_dir_all(dir).map_err(LockError::Io)?;
    let path = dir.join("lock");
    let file =
        OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&path).map_err(LockError::Io)?;
    // Safety: a plain struct for fcntl.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    // Safety: F_SETLK with a valid flock on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lk) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EACCES | libc::EAGAIN) => LockError::Held,
            _ => LockError::Io(e),
        });
    }
    Ok(DirLock { _file: file })
}

/// Segment files in a directory.
pub struct DirFiles {
    dir: PathBuf,
    open: HashMap<i32, File>,
}

impl DirFiles {
    pub fn new(dir: &Path) -> DirFiles {
        DirFiles { dir: dir.to_path_buf(), open: HashMap::new() }
    }

    fn path(&self, id: SegmentId) -> PathBuf {
        self.dir.join(segment::file_name(id.shard, id.seq))
    }
}

impl SegmentFiles for DirFiles {
    fn create(&mut self, id: SegmentId, bytes: u64) -> io::Result<FileRef> {
        let path = self.path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        if let Err(e) = preallocate(&file, bytes) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let fd = file.as_raw_fd();
        self.open.insert(fd, file);
        Ok(FileRef(fd))
    }

    fn close(&mut self, _id: SegmentId, file: FileRef) {
        self.open.remove(&file.0);
    }

    fn recycle(&mut self, old: SegmentId, file: Option<FileRef>, new: SegmentId) -> io::Result<FileRef> {
        let (from, to) = (self.path(old), self.path(new));
        // The new name must not exist: a file there is not ours to replace.
        if std::fs::symlink_metadata(&to).is_ok() {
            if let Some(file) = file {
                self.open.remove(&file.0);
            }
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        if let Err(e) = std::fs::rename(&from, &to) {
            if let Some(file) = file {
                self.open.remove(&file.0);
            }
            return Err(e);
        }
        if let Some(file) = file {
            // The descriptor follows the file through the rename.
            return Ok(file);
        }
        let opened = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&to);
        match opened {
            Ok(f) => {
                let fd = f.as_raw_fd();
                self.open.insert(fd, f);
                Ok(FileRef(fd))
            }
            Err(e) => {
                // Back under its old name, so the segment is as it was.
                let _ = std::fs::rename(&to, &from);
                Err(e)
            }
        }
    }

    fn remove(&mut self, id: SegmentId, file: Option<FileRef>) -> io::Result<()> {
        if let Some(file) = file {
            self.open.remove(&file.0);
        }
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Gives `file` `bytes` of zeros that need no allocation when written:
/// `fallocate`, or zeros written where the file system cannot.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    // Safety: fallocate on our own descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; ZERO_FILL_BYTES];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(ZERO_FILL_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Opens a directory for `fsync`, which makes the entries of files made in
/// it durable.
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in the directory name"))?;
    // Safety: open with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A file made in `dir` and removed on drop, to check that the directory
/// can be written before the server starts.
pub fn check_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".runnerbean-probe-{}", std::process::id()));
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&probe)?;
    let fd = file.into_raw_fd();
    // Safety: closing the descriptor we opened.
    unsafe { libc::close(fd) };
    std::fs::remove_file(&probe)
}
