//! raw: an interactive protocol session.
//!
//! Each line typed is sent as a command with CRLF. After a `put` line, the next line typed is
//! the body (sent with its CRLF; the byte count in the put line has to match, as the protocol
//! wants). Replies are printed as they arrive, framed by `runnerbean_proto`: the reply line,
//! then the body of RESERVED, FOUND and OK replies. After each command rbctl waits for its
//! reply before prompting again, however long a `reserve` takes (Ctrl-C ends the session).
//!
//! On a terminal, lines are edited with rustyline (arrows, history for the session); from a
//! pipe, lines are read as they are, so a session can be scripted. The session ends at the end
//! of input, at `quit`, or when the server closes the connection.
//!
//! This speaks the protocol directly over the library's [`Stream`], not through its `Client`:
//! the bytes typed go out as typed, including malformed ones, and every reply the server sends
//! is shown, even replies to commands that were not what they seemed.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::sync::mpsc;

use clap::Args;
use runnerbean_client::{Address, DEFAULT_CONNECT_TIMEOUT, Stream};

use crate::{Failure, describe_io, exit};

/// `rbctl raw`.
#[derive(Args, Debug)]
pub struct RawArgs {}

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What the reader thread tells the input loop.
enum Heard {
    Reply,
    Closed(Option<std::io::Error>),
}

pub async fn raw(addr: &str, _args: RawArgs) -> Result<(), Failure> {
    let address: Address = addr.parse().map_err(Failure::from)?;
    let stream = address.connect(DEFAULT_CONNECT_TIMEOUT).await.map_err(Failure::from)?;
    let (mut reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match stream {
        Stream::Tcp(s) => {
            let s = s.into_std().map_err(|e| Failure::local("socket", e))?;
            s.set_nonblocking(false).map_err(|e| Failure::local("socket", e))?;
            (Box::new(s.try_clone().map_err(|e| Failure::local("socket", e))?), Box::new(s))
        }
        Stream::Unix(s) => {
            let s = s.into_std().map_err(|e| Failure::local("socket", e))?;
            s.set_nonblocking(false).map_err(|e| Failure::local("socket", e))?;
            (Box::new(s.try_clone().map_err(|e| Failure::local("socket", e))?), Box::new(s))
        }
    };
    let (heard, hear) = mpsc::channel();
    std::thread::spawn(move || {
        let closed = print_replies(&mut reader, &heard);
        let _ = heard.send(Heard::Closed(closed));
    });
    // The input loop blocks on the terminal, so it runs off the async runtime.
    tokio::task::spawn_blocking(move || session(writer, hear))
        .await
        .map_err(|_| Failure::new(exit::BUG, "the raw session failed"))?
}

/// Prints every reply as it is complete; returns how the connection ended.
fn print_replies(reader: &mut dyn Read, heard: &mpsc::Sender<Heard>) -> Option<std::io::Error> {
    let mut input = Vec::new();
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        loop {
            match runnerbean_proto::check(&input) {
                Ok(Some(len)) => {
                    show(&input[..len]);
                    input.drain(..len);
                    if heard.send(Heard::Reply).is_err() {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    show(&input);
                    eprintln!("rbctl: {e}");
                    return None;
                }
            }
        }
        match reader.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Some(e),
        }
    }
}

/// A reply as the user sees it: its line, then the body of a framed reply, each ending in a
/// newline (the wire's CRLFs become newlines).
fn show(frame: &[u8]) {
    let mut text = Vec::with_capacity(frame.len());
    let line_end = frame.windows(2).position(|w| w == b"\r\n").unwrap_or(frame.len());
    text.extend_from_slice(&frame[..line_end]);
    text.push(b'\n');
    if frame.len() >= line_end + 4 {
        let body = &frame[line_end + 2..frame.len() - 2];
        text.extend_from_slice(body);
        if !body.ends_with(b"\n") {
            text.push(b'\n');
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&text).and_then(|()| stdout.flush());
}

/// Lines typed at a terminal (edited) or read from a pipe.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Plain(std::io::StdinLock<'static>),
}

impl Input {
    fn open() -> Result<Input, Failure> {
        if std::io::stdin().is_terminal() {
            let editor =
                rustyline::DefaultEditor::new().map_err(|e| Failure::new(exit::LOCAL_IO, format!("terminal: {e}")))?;
            Ok(Input::Editor(Box::new(editor)))
        } else {
            Ok(Input::Plain(std::io::stdin().lock()))
        }
    }

    /// The next line without its line end, or `None` at the end of input. Commands are kept in
    /// the session's history, bodies (`remember` false) are not.
    fn line(&mut self, prompt: &str, remember: bool) -> Result<Option<String>, Failure> {
        match self {
            Input::Editor(editor) => match editor.readline(prompt) {
                Ok(line) => {
                    if remember {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Ok(Some(line))
                }
                Err(rustyline::error::ReadlineError::Eof | rustyline::error::ReadlineError::Interrupted) => Ok(None),
                Err(e) => Err(Failure::new(exit::LOCAL_IO, format!("terminal: {e}"))),
            },
            Input::Plain(stdin) => {
                let mut line = String::new();
                match stdin.read_line(&mut line) {
                    Ok(0) => Ok(None),
                    Ok(_) => {
                        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
                        Ok(Some(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()))
                    }
                    Err(e) => Err(Failure::local("stdin", e)),
                }
            }
        }
    }
}

fn session(mut writer: Box<dyn Write + Send>, hear: mpsc::Receiver<Heard>) -> Result<(), Failure> {
    let mut input = Input::open()?;
    loop {
        let Some(line) = input.line("beanstalk> ", true)? else { return Ok(()) };
        if line.trim().is_empty() {
            continue;
        }
        let mut bytes = line.clone().into_bytes();
        bytes.extend_from_slice(b"\r\n");
        if line.starts_with("put ") {
            let Some(body) = input.line("body> ", false)? else { return Ok(()) };
            bytes.extend_from_slice(body.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        if let Err(e) = writer.write_all(&bytes).and_then(|()| writer.flush()) {
            return Err(Failure::new(exit::CONNECTION, format!("connection failed: {}", describe_io(&e))));
        }
        // Wait for the reply (or the close that answers quit).
        match hear.recv() {
            Ok(Heard::Reply) => {}
            Ok(Heard::Closed(None)) | Err(_) => {
                if line.trim() != "quit" {
                    eprintln!("rbctl: the server closed the connection");
                }
                return Ok(());
            }
            Ok(Heard::Closed(Some(e))) => {
                return Err(Failure::new(exit::CONNECTION, format!("connection failed: {}", describe_io(&e))));
            }
        }
    }
}
