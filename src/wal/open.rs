//! Opening a log directory at start-up: the lock, C beanstalkd's binlog
//! files imported if there are any, runnerbean's own segments read back,
//! and the export to C beanstalkd's format for the way back.
//!
//! # A log written with another number of cores
//! Each shard writes its own segments, and a job belongs to the shard its
//! tube hashes to, which depends on the number of shards. A start with a
//! different `--cores` than the server that wrote the directory (any
//! segment whose header names another shard count) therefore cannot adopt
//! the old segments shard by shard: a file of old shard 2 holds jobs of
//! several new shards, and a new shard numbering its files from where its
//! namesake stopped would leave old records after new ones in the order of
//! replay. So the jobs are *rewritten*: every job read back is recorded
//! afresh in the new shards' logs, numbered above every old segment, synced,
//! and only then are the old segments removed ([`finish_reshard`]), with one
//! log line. A crash in between leaves old and new segments side by side;
//! they replay to the same jobs (no command ran in between, and the new
//! records come later), and the next start rewrites again.
//!
//! # Importing C beanstalkd's files
//! A directory that holds `binlog.N` files and no runnerbean segments is
//! imported: the files are read with C's recovery rules, the jobs are
//! written into runnerbean's log and synced, and only then are the files
//! moved into a subdirectory (never deleted), with one log line. A marker
//! file, written before anything else and removed last, makes the import
//! safe to interrupt: a start that finds it throws away the segments the
//! interrupted import wrote, moves back whatever C files it had moved, and
//! imports again.

use std::io;
use std::path::{Path, PathBuf};

use super::cbinlog;
use super::files::{self, DirLock, LockError};
use super::image::JobImage;
use super::recover::{self, Recovered, RecoveredJob, SegmentId};
use super::segment;

/// The marker of an import in progress; it holds the name of the
/// subdirectory the C files go to.
pub const IMPORT_MARKER: &str = "runnerbean-import-in-progress";

/// The start of the name of the subdirectory imported C files are moved to.
pub const IMPORTED_DIR_PREFIX: &str = "beanstalkd-binlog-imported-";

pub enum OpenError {
    /// Another process holds `DIR/lock` (exit 10, as beanstalkd).
    Locked,
    /// Anything else, with a message for the operator.
    Failed(String),
}

/// An import of C files under way: finished by [`finish_import`] once the
/// jobs are durable in runnerbean's log.
pub struct PendingImport {
    dir: PathBuf,
    files: Vec<PathBuf>,
    subdir: PathBuf,
    pub jobs: usize,
    pub skipped: usize,
}

/// A rewrite for a new number of shards under way (see "A log written
/// with another number of cores"): finished by [`finish_reshard`] once the
/// jobs are durable in the new segments.
pub struct PendingReshard {
    dir: PathBuf,
    /// Every segment read back.
    files: Vec<PathBuf>,
    /// The shard counts the segments were written with.
    from: Vec<u32>,
    to: u32,
    pub jobs: usize,
}

impl PendingReshard {
    /// What the new shards' logs must know of the directory: no jobs (they
    /// are recorded afresh), and for each new shard a seq taken above every
    /// old segment's, so that new segments sort after all of them.
    pub fn known(&self, recovered: &Recovered) -> Recovered {
        let top = recovered.segments.iter().map(|s| s.id.seq).chain(recovered.refused.iter().map(|id| id.seq)).max();
        let mut refused = recovered.refused.clone();
        refused.extend((0..self.to).map(|shard| SegmentId { shard, seq: top.unwrap_or(0) }));
        Recovered { next_id: recovered.next_id, refused, ..Recovered::default() }
    }
}

pub struct Opened {
    pub lock: DirLock,
    pub recovered: Recovered,
    /// Set when the jobs came from C files: they are not in runnerbean's log
    /// yet, and must be written and synced before [`finish_import`].
    pub import: Option<PendingImport>,
    /// Set when the log was written with another number of shards: the
    /// jobs must be written again and synced before [`finish_reshard`].
    pub reshard: Option<PendingReshard>,
}

/// Locks and reads `dir`, creating it if it does not exist, for a server
/// of `shards` shards.
pub fn open(dir: &Path, max_job_bytes: u64, now_wall_ns: u64, shards: u32) -> Result<Opened, OpenError> {
    let fail = |what: &str, e: io::Error| OpenError::Failed(format!("{}: {what}: {e}", dir.display()));
    let lock = files::lock(dir).map_err(|e| match e {
        LockError::Held => OpenError::Locked,
        LockError::Io(e) => fail("cannot use it for the log", e),
    })?;
    files::check_writable(dir).map_err(|e| fail("cannot write in it", e))?;
    let marker = dir.join(IMPORT_MARKER);
    if marker.exists() {
        undo_import(dir, &marker).map_err(|e| fail("cannot undo an interrupted import", e))?;
    }
    let c_files = c_binlog_names(dir).map_err(|e| fail("cannot list it", e))?;
    let ours = has_segments(dir).map_err(|e| fail("cannot list it", e))?;
    if !c_files.is_empty() && ours {
        return Err(OpenError::Failed(format!(
            "{} holds both C beanstalkd's binlog files and runnerbean's log; move one of them \
             elsewhere (runnerbean imports binlog files only into a directory without its own log)",
            dir.display()
        )));
    }
    if c_files.is_empty() {
        let mut recovered = recover::recover(dir).map_err(|e| fail("cannot read the log", e))?;
        for path in std::mem::take(&mut recovered.unused) {
            // Made ahead and never used: nothing is lost with it.
            if let Err(e) = std::fs::remove_file(&path) {
                recovered.warnings.push(format!("{}: cannot remove an unused segment: {e}", path.display()));
            }
        }
        let reshard = needs_reshard(&recovered, shards).then(|| {
            let mut from: Vec<u32> = recovered.segments.iter().map(|s| s.shards).collect();
            from.sort_unstable();
            from.dedup();
            PendingReshard {
                dir: dir.to_path_buf(),
                files: recovered.segments.iter().map(|s| s.path.clone()).collect(),
                from,
                to: shards,
                jobs: recovered.jobs.len(),
            }
        });
        return Ok(Opened { lock, recovered, import: None, reshard });
    }
    let import = cbinlog::read_dir(dir, max_job_bytes).map_err(|e| fail("cannot read the binlog files", e))?;
    let subdir = dir.join(format!("{IMPORTED_DIR_PREFIX}{}", now_wall_ns / 1_000_000_000));
    std::fs::write(&marker, subdir.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default())
        .and_then(|()| sync_dir(dir))
        .map_err(|e| fail("cannot start the import", e))?;
    let mut warnings: Vec<String> = import.warnings.iter().map(|w| w.to_string()).collect();
    for s in &import.skipped {
        warnings.push(format!(
            "{}:{}: job {} in tube {} has a {}-byte body, over the -z limit of {max_job_bytes}; not imported \
             (start with a larger -z to keep it)",
            s.file.display(),
            s.offset,
            s.id,
            s.tube,
            s.body_bytes
        ));
    }
    let pending = PendingImport {
        dir: dir.to_path_buf(),
        files: c_files,
        subdir,
        jobs: import.jobs.len(),
        skipped: import.skipped.len(),
    };
    let no_segment = SegmentId { shard: u32::MAX, seq: 0 };
    let jobs = import
        .jobs
        .into_iter()
        .map(|image| RecoveredJob { image, body: None, segment: no_segment, has_state: false })
        .collect();
    let recovered = Recovered { jobs, next_id: import.next_id, warnings, ..Recovered::default() };
    Ok(Opened { lock, recovered, import: Some(pending), reshard: None })
}

/// Whether the segments read back were written by a server of another
/// number of shards than `shards`.
fn needs_reshard(recovered: &Recovered, shards: u32) -> bool {
    recovered.segments.iter().any(|s| s.shards != shards || s.id.shard >= shards)
}

/// Ends a rewrite for a new number of shards once the jobs are synced in
/// the new segments: the old segments go. Returns the log line that says
/// so.
pub fn finish_reshard(reshard: PendingReshard) -> io::Result<String> {
    for file in &reshard.files {
        std::fs::remove_file(file)?;
    }
    sync_dir(&reshard.dir)?;
    let from: Vec<String> = reshard.from.iter().map(u32::to_string).collect();
    let plural = |n: usize, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
    let was = if reshard.from == [1] { "1 core".to_string() } else { format!("{} cores", from.join(" and ")) };
    Ok(format!(
        "the log was written with {was}, and {} now: {} written again for {} and {} removed",
        plural(reshard.to as usize, "core", "cores"),
        plural(reshard.jobs, "job", "jobs"),
        plural(reshard.to as usize, "core", "cores"),
        plural(reshard.files.len(), "old segment file", "old segment files"),
    ))
}

/// Ends an import once its jobs are synced in runnerbean's log: the C
/// files move into their subdirectory and the marker goes. Returns the log
/// line that says so.
pub fn finish_import(import: PendingImport) -> io::Result<String> {
    std::fs::create_dir_all(&import.subdir)?;
    for file in &import.files {
        let name = file.file_name().ok_or_else(|| io::Error::other("a binlog path without a name"))?;
        std::fs::rename(file, import.subdir.join(name))?;
    }
    sync_dir(&import.subdir)?;
    sync_dir(&import.dir)?;
    std::fs::remove_file(import.dir.join(IMPORT_MARKER))?;
    sync_dir(&import.dir)?;
    let skipped = match import.skipped {
        0 => String::new(),
        n => format!(" ({n} over the -z limit left out)"),
    };
    Ok(format!(
        "imported {} jobs{skipped} from {} C beanstalkd binlog files; the files were moved to {}",
        import.jobs,
        import.files.len(),
        import.subdir.display()
    ))
}

/// An import was interrupted: its segments go, and C files already moved
/// come back, so that it can start again.
fn undo_import(dir: &Path, marker: &Path) -> io::Result<()> {
    let subdir_name = std::fs::read_to_string(marker)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().and_then(segment::parse_file_name).is_some() {
            std::fs::remove_file(entry.path())?;
        }
    }
    let subdir = dir.join(subdir_name.trim());
    if !subdir_name.trim().is_empty() && subdir.is_dir() {
        for entry in std::fs::read_dir(&subdir)? {
            let entry = entry?;
            std::fs::rename(entry.path(), dir.join(entry.file_name()))?;
        }
        std::fs::remove_dir(&subdir)?;
    }
    std::fs::remove_file(marker)?;
    sync_dir(dir)
}

/// The `binlog.*` files of `dir`: every name C's scan would count, read or
/// not (all of them move aside together).
fn c_binlog_names(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with("binlog.")) && entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn has_segments(dir: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if entry?.file_name().to_str().and_then(segment::parse_file_name).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    let fd = files::open_dir(dir)?;
    use std::os::fd::AsRawFd;
    // Safety: fsync on a descriptor we own.
    if unsafe { libc::fsync(fd.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What an export wrote.
pub struct Exported {
    pub path: PathBuf,
    pub jobs: u64,
    /// The `-z` C beanstalkd needs to read every job back.
    pub job_size_min: u64,
    pub warnings: Vec<String>,
}

/// `--export-binlog DIR OUT`: the live jobs of runnerbean's log in `dir`
/// as one `OUT/binlog.1` that C beanstalkd starts from. The directory is
/// locked while it is read, so a running server's log is never exported
/// half-written. A directory without runnerbean's log is refused rather
/// than exported as an empty binlog.
pub fn export(dir: &Path, out: &Path) -> Result<Exported, OpenError> {
    let fail = |what: &str, e: io::Error| OpenError::Failed(format!("{what}: {e}"));
    if !dir.is_dir() {
        return Err(OpenError::Failed(format!("{}: no such directory", dir.display())));
    }
    let _lock = files::lock(dir).map_err(|e| match e {
        LockError::Held => OpenError::Locked,
        LockError::Io(e) => fail(&format!("{}: cannot lock it", dir.display()), e),
    })?;
    // A directory runnerbean never ran on would export as an empty binlog, which looks like
    // success and is most likely the wrong directory (or C beanstalkd's own, which it reads
    // as it is).
    if !has_segments(dir).map_err(|e| fail(&format!("{}: cannot list it", dir.display()), e))? {
        let c_files = c_binlog_names(dir).map_err(|e| fail(&format!("{}: cannot list it", dir.display()), e))?;
        let why = if c_files.is_empty() {
            String::new()
        } else {
            "; it holds C beanstalkd's binlog files, which C beanstalkd reads as they are".to_string()
        };
        return Err(OpenError::Failed(format!("{}: no runnerbean log to export{why}", dir.display())));
    }
    let recovered = recover::recover(dir).map_err(|e| fail(&format!("{}: cannot read the log", dir.display()), e))?;
    std::fs::create_dir_all(out).map_err(|e| fail(&format!("{}: cannot create it", out.display()), e))?;
    if !c_binlog_names(out).map_err(|e| fail(&format!("{}: cannot list it", out.display()), e))?.is_empty() {
        return Err(OpenError::Failed(format!(
            "{} already holds binlog files; export into an empty directory",
            out.display()
        )));
    }
    let path = out.join("binlog.1");
    let jobs: Vec<JobImage> = recovered.jobs.into_iter().map(|j| j.into_image()).collect();
    let written = cbinlog::write_v7(&path, &jobs, recovered.next_id)
        .map_err(|e| fail(&format!("{}: cannot write it", path.display()), e))?;
    Ok(Exported { path, jobs: written.jobs, job_size_min: written.c_job_size_min(), warnings: recovered.warnings })
}
