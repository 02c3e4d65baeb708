//! Facts about the process and the host, and the few system calls the
//! start-up needs: `uname`, `getrusage`, a random instance id, dropping
//! privileges. Each is a thin, safe wrapper.

use std::ffi::{CStr, CString};
use std::io;

use crate::protocol::yaml::CpuTime;

/// The `uname` fields that `stats` reports.
#[derive(Clone, Debug)]
pub struct Uname {
    pub nodename: String,
    /// The kernel release, for example `6.1.0-18-amd64`.
    pub release: String,
    /// The *version* field (`#1 SMP ...`), which beanstalkd reports as `os`.
    pub version: String,
    pub machine: String,
}

pub fn uname() -> io::Result<Uname> {
    // Safety: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let field = |f: &[libc::c_char]| {
        // Safety: uname NUL-terminates every field within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned()
    };
    Ok(Uname {
        nodename: field(&u.nodename),
        release: field(&u.release),
        version: field(&u.version),
        machine: field(&u.machine),
    })
}

/// User and system CPU time of the whole process.
pub fn cpu_times() -> (CpuTime, CpuTime) {
    // Safety: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| CpuTime { secs: tv.tv_sec as u64, micros: tv.tv_usec as u32 };
    (t(ru.ru_utime), t(ru.ru_stime))
}

/// 16 lowercase hex digits from 8 random bytes, as beanstalkd's `id`.
pub fn instance_id() -> io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn pid() -> u32 {
    std::process::id()
}

/// Why dropping privileges failed, with beanstalkd's exit code.
#[derive(Debug)]
pub struct PrivilegeError {
    pub message: String,
    pub exit_code: i32,
}

/// Becomes `user`: its primary group, no supplementary groups, its uid.
/// beanstalkd keeps the supplementary groups of the starting user; dropping
/// them is the safer choice (docs/COMPAT.md).
pub fn become_user(user: &str) -> Result<(), PrivilegeError> {
    let fail = |message: String, exit_code| PrivilegeError { message, exit_code };
    let name = CString::new(user).map_err(|_| fail(format!("getpwnam(\"{user}\"): no such user"), 33))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // Safety: every pointer is valid for the duration of the call.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(fail(format!("getpwnam(\"{user}\"): {}", io::Error::from_raw_os_error(rc)), 32));
    }
    if result.is_null() {
        return Err(fail(format!("getpwnam(\"{user}\"): no such user"), 33));
    }
    let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
    let gids = [gid];
    // Safety: plain system calls with valid arguments.
    unsafe {
        if libc::setgroups(1, gids.as_ptr()) != 0 {
            return Err(fail(format!("setgroups({gid} \"{user}\"): {}", io::Error::last_os_error()), 34));
        }
        if libc::setgid(gid) != 0 {
            return Err(fail(format!("setgid({gid} \"{user}\"): {}", io::Error::last_os_error()), 34));
        }
        if libc::setuid(uid) != 0 {
            return Err(fail(format!("setuid({uid} \"{user}\"): {}", io::Error::last_os_error()), 34));
        }
    }
    Ok(())
}

/// The signals the server acts on: SIGUSR1 (drain mode), SIGTERM and
/// SIGINT (stop).
pub const SERVER_SIGNALS: [libc::c_int; 3] = [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT];

/// Blocks the server's signals and returns a signalfd that reports them.
/// Called first thing in `main`: from then on a signal is never lost and
/// never takes its default action (death); it waits until the event loop
/// reads it.
pub fn server_signal_fd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // Safety: sigset_t is plain old data, filled by sigemptyset/sigaddset;
    // sigprocmask and signalfd get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SERVER_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// Ignores SIGPIPE, so a write to a closed socket is an error, not death.
pub fn ignore_sigpipe() {
    // Safety: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// The CPUs this process may run on (`sched_getaffinity`), in order; empty
/// when the call fails.
pub fn allowed_cpus() -> Vec<usize> {
    // Safety: cpu_set_t is plain old data; sched_getaffinity fills it and
    // CPU_ISSET reads it within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // Safety: as in `allowed_cpus`; CPU_SET writes within the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts() {
        let u = uname().unwrap();
        assert!(!u.machine.is_empty());
        let id = instance_id().unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let (user, _) = cpu_times();
        assert!(user.micros < 1_000_000);
    }
}
