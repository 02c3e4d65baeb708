//! Output: stdout writes that fail cleanly, aligned tables, the progress bar and the
//! confirmation prompt.
//!
//! A closed stdout (`rbctl tail | head -1`) ends the command quietly with status 0, as `cat`
//! and `grep` do; any other write error is a local I/O failure.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::{Failure, exit};

/// Writes bytes to stdout and flushes them.
pub fn write(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush()).map_err(stdout_failure)
}

/// Writes a line to stdout.
pub fn line(text: &str) -> Result<(), Failure> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    write(&bytes)
}

fn stdout_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader has gone away: nothing is wrong, and nobody is left to tell.
        return Failure::new(exit::OK, "");
    }
    Failure::local("stdout", e)
}

/// Whether stdout is a terminal (a person reads it).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// A job's body as printed by reserve and peek: the bytes exactly when stdout is a file or a
/// pipe; on a terminal, a line with the id first and a newline after the body.
pub fn job(id: runnerbean_client::JobId, body: &[u8]) -> Result<(), Failure> {
    if !stdout_is_terminal() {
        return write(body);
    }
    let mut bytes = format!("job {id} ({} bytes)\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    if !body.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    write(&bytes)
}

/// Rows as columns padded to their widest cell; numbers (cells that parse as one, and "-")
/// are aligned right, text left. The first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    // A column is numeric when every cell below the header is.
    let numeric: Vec<bool> = (0..columns)
        .map(|i| {
            rows.len() > 1
                && rows[1..].iter().all(|row| row.get(i).is_some_and(|c| c == "-" || c.parse::<f64>().is_ok()))
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut cells = Vec::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            let last = i + 1 == row.len();
            cells.push(match (numeric[i], last) {
                (true, _) => format!("{}{cell}", " ".repeat(pad)),
                (false, true) => cell.clone(),
                (false, false) => format!("{cell}{}", " ".repeat(pad)),
            });
        }
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// How often the progress bar is redrawn: often enough to look alive, rarely enough to cost
/// nothing next to the work.
const PROGRESS_REDRAW: Duration = Duration::from_millis(100);

/// Width of the bar itself, in characters.
const PROGRESS_BAR_CHARS: usize = 30;

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Progress {
    what: &'static str,
    total: u64,
    drawn_at: Option<Instant>,
    shown: bool,
}

impl Progress {
    /// A bar for `total` steps of `what` ("put", "deleted").
    pub fn new(what: &'static str, total: u64) -> Progress {
        Progress { what, total, drawn_at: None, shown: std::io::stderr().is_terminal() }
    }

    /// Redraws the bar for `done` steps, at most every [`PROGRESS_REDRAW`].
    pub fn update(&mut self, done: u64) {
        if !self.shown || self.drawn_at.is_some_and(|at| at.elapsed() < PROGRESS_REDRAW) {
            return;
        }
        self.drawn_at = Some(Instant::now());
        let filled = (done.min(self.total) * PROGRESS_BAR_CHARS as u64).checked_div(self.total).unwrap_or(0) as usize;
        let bar = format!("{}{}", "#".repeat(filled), " ".repeat(PROGRESS_BAR_CHARS - filled));
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{} [{bar}] {done}/{}", self.what, self.total);
        let _ = stderr.flush();
    }

    /// Erases the bar.
    pub fn finish(self) {
        if self.shown && self.drawn_at.is_some() {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

/// Asks a yes/no question on stderr and reads the answer from stdin; only "y" or "yes" is yes.
pub fn confirm(question: &str) -> Result<bool, Failure> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| Failure::local("stdin", e))?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Whether stdin is a terminal (a person can answer a prompt).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let rows = vec![
            vec!["TUBE".to_owned(), "READY".to_owned(), "PUT/S".to_owned()],
            vec!["default".to_owned(), "5".to_owned(), "0.0".to_owned()],
            vec!["a".to_owned(), "12345".to_owned(), "-".to_owned()],
        ];
        assert_eq!(table(&rows), "TUBE     READY  PUT/S\ndefault      5    0.0\na        12345      -\n");
    }
}
