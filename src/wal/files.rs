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

/// Bytes written at a time when zeros are written into a file.
const ZERO_FILL_BYTES: usize = 1 << 20;

/// Files made before the server serves (the first segment and its spares)
/// get their zeros written when they are at most this large: written
/// blocks make a `-f0` sync cheaper (see [`DirFiles::create`]), and a
/// start spends a few tens of milliseconds on it. Larger `-s` values keep
/// `fallocate` alone, as do files made while serving, where writing
/// megabytes of zeros would stall the loop.
const ZERO_FILL_AT_START_BYTES_MAX: u64 = 64 * 1024 * 1024;

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
    /// Before the server serves: files made get their zeros written.
    starting: bool,
}

impl DirFiles {
    pub fn new(dir: &Path) -> DirFiles {
        DirFiles { dir: dir.to_path_buf(), open: HashMap::new(), starting: true }
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
        // A sync of records written into `fallocate`d space commits the
        // file system's journal (the extents written for the first time
        // change from unwritten to written); into blocks whose zeros were
        // written, it writes the data alone. At start, the zeros are worth
        // writing; later, reused segments give the same (see `log`).
        let made = preallocate(&file, bytes).and_then(|()| {
            if self.starting && bytes <= ZERO_FILL_AT_START_BYTES_MAX { write_zeros(&file, bytes) } else { Ok(()) }
        });
        if let Err(e) = made {
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

    fn serving(&mut self) {
        self.starting = false;
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
    write_zeros(file, bytes)
}

/// Writes `bytes` of zeros from the start of `file` and syncs them, so
/// that its blocks are allocated and written.
fn write_zeros(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; ZERO_FILL_BYTES];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(ZERO_FILL_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether any extent of `file` is allocated but unwritten (FIEMAP),
    /// or None where the file system cannot say.
    fn has_unwritten_extents(file: &File) -> Option<bool> {
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const FIEMAP_FLAG_SYNC: u32 = 1;
        const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
        const EXTENTS: usize = 64;
        // struct fiemap (32 bytes) followed by its extents (56 bytes each).
        let mut buf = vec![0u64; (32 + 56 * EXTENTS) / 8];
        buf[1] = u64::MAX; // fm_length
        // Safety: the u64 buffer viewed as twice as many u32s, in bounds
        // and aligned.
        let words: &mut [u32] = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() * 2) };
        words[4] = FIEMAP_FLAG_SYNC; // fm_flags
        words[6] = EXTENTS as u32; // fm_extent_count
        // Safety: FS_IOC_FIEMAP on our own descriptor with a buffer of the
        // size the extent count says.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) } < 0 {
            return None;
        }
        // Safety: as above.
        let words: &[u32] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len() * 2) };
        let mapped = words[5] as usize;
        // fe_flags is at byte 40 of each extent.
        Some((0..mapped.min(EXTENTS)).any(|i| words[(32 + 56 * i + 40) / 4] & FIEMAP_EXTENT_UNWRITTEN != 0))
    }

    #[test]
    fn files_made_at_start_have_their_zeros_written_and_later_ones_are_preallocated() {
        let dir = std::env::temp_dir().join(format!("rb-files-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = DirFiles::new(&dir);
        let bytes = 1 << 20;
        let at_start = files.create(SegmentId { shard: 0, seq: 1 }, bytes).unwrap();
        files.serving();
        let later = files.create(SegmentId { shard: 0, seq: 2 }, bytes).unwrap();
        let unwritten = |f: FileRef| has_unwritten_extents(&files.open[&f.0]);
        match (unwritten(at_start), unwritten(later)) {
            (Some(start), Some(later)) => {
                assert!(!start, "the file made at start still has unwritten extents");
                // Where fallocate leaves unwritten extents (ext4, xfs), the
                // later file has them; elsewhere it was zero-filled too.
                eprintln!("a file made while serving has unwritten extents: {later}");
            }
            _ => eprintln!("this file system does not map extents (FIEMAP); nothing to check"),
        }
        for f in [at_start, later] {
            use std::os::unix::fs::FileExt;
            let mut back = vec![1u8; bytes as usize];
            files.open[&f.0].read_exact_at(&mut back, 0).unwrap();
            assert!(back.iter().all(|&b| b == 0));
        }
        drop(files);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
