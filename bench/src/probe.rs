//! Readings of a process from /proc: CPU time (schedstat, in nanoseconds,
//! kernel time included) and resident memory.

pub struct Process {
    pid: u32,
}

impl Process {
    pub fn new(pid: u32) -> Process {
        Process { pid }
    }

    /// Time on CPU in nanoseconds, all threads, user and kernel.
    pub fn cpu_ns(&self) -> Option<u64> {
        // /proc/PID/schedstat covers the main thread only; sum the tasks.
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut total = 0;
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    }

    /// Resident set size in KiB.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

pub struct Snapshot {
    pub server_cpu_ns: Option<u64>,
    pub server_rss_kb: Option<u64>,
    pub client_cpu_ns: u64,
}

impl Snapshot {
    pub fn take(server: Option<&Process>, client: &Process) -> Snapshot {
        Snapshot {
            server_cpu_ns: server.and_then(Process::cpu_ns),
            server_rss_kb: server.and_then(Process::rss_kb),
            client_cpu_ns: client.cpu_ns().unwrap_or(0),
        }
    }
}
