//! top: a live view of every tube and of the server.
//!
//! Each refresh takes one sample: `stats`, `list-tubes`, and every tube's `stats-tube`,
//! pipelined on one connection. Rates are differences between two samples divided by the time
//! between them: per tube, jobs put (`total-jobs`) and deleted (`cmd-delete`); for the server,
//! puts, reserves (`cmd-reserve` plus `cmd-reserve-with-timeout`) and deletes. The protocol
//! counts reserves per server only, so the tube rows have no reserve rate.
//!
//! On a terminal the view is full-screen (ratatui on crossterm): sortable by any column,
//! filterable by tube name, refreshed every interval. When stdout is not a terminal, each
//! refresh prints plain lines instead (one for the server, one per tube), so `rbctl top |
//! grep` and logs work.
//!
//! The terminal is restored on every way out (a guard's drop, and ratatui's panic hook).

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use runnerbean_client::{Client, Stats, TubeStats};
use tokio::sync::mpsc;

use crate::out;
use crate::report::all_tubes;
use crate::{Failure, about, connect, exit};

/// The shortest refresh interval: a sample costs the server one command per tube, and a view
/// redrawn faster than this cannot be read anyway.
const INTERVAL_SECS_MIN: f64 = 0.1;

/// `rbctl top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// The column to sort the tubes by.
    #[arg(long, value_enum, default_value_t = Column::Name)]
    sort: Column,
    /// Show only tubes whose name contains this text.
    #[arg(long, default_value = "")]
    filter: String,
    /// Stop after this many refreshes (when stdout is not a terminal).
    #[arg(short = 'n', long)]
    count: Option<u64>,
}

/// A column of the tube table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Column {
    Name,
    Ready,
    Reserved,
    Delayed,
    Buried,
    Waiting,
    Puts,
    Deletes,
}

const COLUMNS: [Column; 8] = [
    Column::Name,
    Column::Ready,
    Column::Reserved,
    Column::Delayed,
    Column::Buried,
    Column::Waiting,
    Column::Puts,
    Column::Deletes,
];

impl Column {
    fn title(self) -> &'static str {
        match self {
            Column::Name => "TUBE",
            Column::Ready => "READY",
            Column::Reserved => "RESERVED",
            Column::Delayed => "DELAYED",
            Column::Buried => "BURIED",
            Column::Waiting => "WAITING",
            Column::Puts => "PUT/S",
            Column::Deletes => "DELETE/S",
        }
    }

    fn next(self) -> Column {
        let at = COLUMNS.iter().position(|&c| c == self).unwrap_or(0);
        COLUMNS[(at + 1) % COLUMNS.len()]
    }
}

/// One refresh's numbers.
struct Sample {
    at: Instant,
    stats: Stats,
    tubes: Vec<TubeStats>,
}

async fn sample(client: &Client) -> Result<Sample, Failure> {
    let (stats, tubes) = tokio::join!(client.stats(), all_tubes(client));
    let stats = stats.map_err(|e| about("stats", e))?;
    Ok(Sample { at: Instant::now(), stats, tubes: tubes? })
}

/// One tube's row.
struct TubeRow {
    name: String,
    counts: [u64; 5],
    paused: bool,
    puts: Option<f64>,
    deletes: Option<f64>,
}

/// What the screen shows: server totals, rates, and the tube rows.
struct View {
    stats: Stats,
    puts: Option<f64>,
    reserves: Option<f64>,
    deletes: Option<f64>,
    tubes: Vec<TubeRow>,
}

fn view(previous: Option<&Sample>, now: Sample) -> View {
    let seconds = previous.map(|p| now.at.duration_since(p.at).as_secs_f64()).filter(|s| *s > 0.0);
    let rate = |before: u64, after: u64| seconds.map(|s| after.saturating_sub(before) as f64 / s);
    let server = |f: fn(&Stats) -> u64| previous.and_then(|p| rate(f(&p.stats), f(&now.stats)));
    let tubes = now
        .tubes
        .iter()
        .map(|tube| {
            let before = previous.and_then(|p| p.tubes.iter().find(|t| t.name == tube.name));
            TubeRow {
                name: tube.name.clone(),
                counts: [
                    tube.current_jobs_ready,
                    tube.current_jobs_reserved,
                    tube.current_jobs_delayed,
                    tube.current_jobs_buried,
                    tube.current_waiting,
                ],
                paused: tube.pause_time_left > 0,
                puts: before.and_then(|b| rate(b.total_jobs, tube.total_jobs)),
                deletes: before.and_then(|b| rate(b.cmd_delete, tube.cmd_delete)),
            }
        })
        .collect();
    View {
        puts: server(|s| s.cmd_put),
        reserves: server(|s| s.cmd_reserve + s.cmd_reserve_with_timeout),
        deletes: server(|s| s.cmd_delete),
        stats: now.stats,
        tubes,
    }
}

/// The rows to show: filtered by name, sorted by the column (names break ties).
fn rows<'a>(tubes: &'a [TubeRow], sort: Column, descending: bool, filter: &str) -> Vec<&'a TubeRow> {
    let mut rows: Vec<&TubeRow> = tubes.iter().filter(|t| t.name.contains(filter)).collect();
    let key = |row: &TubeRow| -> f64 {
        match sort {
            Column::Name => 0.0,
            Column::Ready => row.counts[0] as f64,
            Column::Reserved => row.counts[1] as f64,
            Column::Delayed => row.counts[2] as f64,
            Column::Buried => row.counts[3] as f64,
            Column::Waiting => row.counts[4] as f64,
            Column::Puts => row.puts.unwrap_or(0.0),
            Column::Deletes => row.deletes.unwrap_or(0.0),
        }
    };
    // Numbers read best largest first, names alphabetically; `descending` flips that order,
    // and names break ties alphabetically either way.
    let largest_first = sort != Column::Name;
    rows.sort_by(|a, b| {
        let order = key(a).total_cmp(&key(b));
        let order = if largest_first != descending { order.reverse() } else { order };
        let order = if sort == Column::Name && descending { a.name.cmp(&b.name).reverse() } else { order };
        order.then_with(|| a.name.cmp(&b.name))
    });
    rows
}

fn rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_owned(), |r| format!("{r:.1}"))
}

pub async fn top(addr: &str, args: TopArgs) -> Result<(), Failure> {
    if !args.interval.is_finite() || args.interval < INTERVAL_SECS_MIN {
        return Err(Failure::new(exit::USAGE, format!("--interval must be at least {INTERVAL_SECS_MIN} seconds")));
    }
    let client = connect(addr).await?;
    let interval = Duration::from_secs_f64(args.interval);
    if out::stdout_is_terminal() {
        screen(&client, addr, &args, interval).await
    } else {
        lines(&client, &args, interval).await
    }
}

/// The plain mode: a block of lines per refresh.
async fn lines(client: &Client, args: &TopArgs, interval: Duration) -> Result<(), Failure> {
    let mut previous: Option<Sample> = None;
    let mut ticks = tokio::time::interval(interval);
    let mut printed = 0;
    while args.count.is_none_or(|count| printed < count) {
        ticks.tick().await;
        let now = sample(client).await?;
        let at = now.at;
        let kept = Sample { at, stats: now.stats.clone(), tubes: now.tubes.clone() };
        let view = view(previous.as_ref(), now);
        previous = Some(kept);
        let s = &view.stats;
        let mut text = format!(
            "server ready={} reserved={} delayed={} buried={} connections={} producers={} workers={} waiting={} put/s={} reserve/s={} delete/s={}\n",
            s.current_jobs_ready,
            s.current_jobs_reserved,
            s.current_jobs_delayed,
            s.current_jobs_buried,
            s.current_connections,
            s.current_producers,
            s.current_workers,
            s.current_waiting,
            rate(view.puts),
            rate(view.reserves),
            rate(view.deletes),
        );
        for row in rows(&view.tubes, args.sort, false, &args.filter) {
            let [ready, reserved, delayed, buried, waiting] = row.counts;
            text.push_str(&format!(
                "tube {} ready={ready} reserved={reserved} delayed={delayed} buried={buried} waiting={waiting} put/s={} delete/s={}{}\n",
                row.name,
                rate(row.puts),
                rate(row.deletes),
                if row.paused { " paused" } else { "" },
            ));
        }
        out::write(text.as_bytes())?;
        printed += 1;
    }
    Ok(())
}

/// Restores the terminal when the full-screen view ends, however it ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The screen's interactive state.
struct Controls {
    sort: Column,
    descending: bool,
    filter: String,
    editing_filter: bool,
}

enum Action {
    Redraw,
    Quit,
}

impl Controls {
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> Action {
        if code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if self.editing_filter {
            match code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            return Action::Redraw;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char('/') => self.editing_filter = true,
            _ => {}
        }
        Action::Redraw
    }
}

async fn screen(client: &Client, addr: &str, args: &TopArgs, interval: Duration) -> Result<(), Failure> {
    let mut terminal = ratatui::try_init().map_err(|e| Failure::local("terminal", e))?;
    let _guard = TerminalGuard;
    // crossterm's event reading blocks, so it has a thread of its own that forwards keys.
    let (keys, mut key_events) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if keys.send(event).is_err() {
                return;
            }
        }
    });
    let mut controls =
        Controls { sort: args.sort, descending: false, filter: args.filter.clone(), editing_filter: false };
    let mut previous: Option<Sample> = None;
    let mut current: Option<View> = None;
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = sample(client).await?;
                let kept = Sample { at: now.at, stats: now.stats.clone(), tubes: now.tubes.clone() };
                current = Some(view(previous.as_ref(), now));
                previous = Some(kept);
            }
            event = key_events.recv() => match event {
                Some(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                    if let Action::Quit = controls.key(key.code, key.modifiers) {
                        return Ok(());
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
        if let Some(view) = &current {
            terminal.draw(|frame| draw(frame, addr, view, &controls)).map_err(|e| Failure::local("terminal", e))?;
        }
    }
}

fn draw(frame: &mut ratatui::Frame, addr: &str, view: &View, controls: &Controls) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(5), Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    let s = &view.stats;
    let server = match &s.runnerbean_version {
        Some(version) => format!("runnerbean {version} (beanstalkd {})", s.version),
        None => format!("beanstalkd {}", s.version),
    };
    let lines = vec![
        Line::from(format!("{addr}  {server}  pid {}  up {}s", s.pid, s.uptime)),
        Line::from(format!(
            "jobs: ready {}  reserved {}  delayed {}  buried {}  urgent {}",
            s.current_jobs_ready,
            s.current_jobs_reserved,
            s.current_jobs_delayed,
            s.current_jobs_buried,
            s.current_jobs_urgent
        )),
        Line::from(format!(
            "connections {}  producers {}  workers {}  waiting {}   put/s {}  reserve/s {}  delete/s {}",
            s.current_connections,
            s.current_producers,
            s.current_workers,
            s.current_waiting,
            rate(view.puts),
            rate(view.reserves),
            rate(view.deletes)
        )),
    ];
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" rbctl top ")), header);

    let arrow = if (controls.sort != Column::Name) != controls.descending { "▼" } else { "▲" };
    let titles =
        COLUMNS.map(|c| if c == controls.sort { format!("{}{arrow}", c.title()) } else { c.title().to_owned() });
    let table_rows = rows(&view.tubes, controls.sort, controls.descending, &controls.filter).into_iter().map(|row| {
        let name = if row.paused { format!("{} (paused)", row.name) } else { row.name.clone() };
        let mut cells = vec![name];
        cells.extend(row.counts.iter().map(u64::to_string));
        cells.push(rate(row.puts));
        cells.push(rate(row.deletes));
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Min(20)];
    widths.extend([Constraint::Length(10); 7]);
    let table = Table::new(table_rows, widths)
        .header(Row::new(titles).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(format!(" {} tubes ", view.tubes.len())));
    frame.render_widget(table, body);

    let filter = if controls.editing_filter {
        format!("filter: {}_", controls.filter)
    } else if controls.filter.is_empty() {
        "/ filter".to_owned()
    } else {
        format!("/ filter: {}", controls.filter)
    };
    let help = format!("q quit  s sort ({})  r reverse  {filter}", controls.sort.title());
    frame.render_widget(Paragraph::new(help), footer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, ready: u64, puts: Option<f64>) -> TubeRow {
        TubeRow { name: name.to_owned(), counts: [ready, 0, 0, 0, 0], paused: false, puts, deletes: None }
    }

    #[test]
    fn sorting_and_filtering() {
        let tubes = vec![row("b", 1, Some(5.0)), row("a", 3, None), row("ab", 2, Some(1.0))];
        let names = |rows: Vec<&TubeRow>| rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(rows(&tubes, Column::Name, false, "")), ["a", "ab", "b"]);
        assert_eq!(names(rows(&tubes, Column::Name, true, "")), ["b", "ab", "a"]);
        assert_eq!(names(rows(&tubes, Column::Ready, false, "")), ["a", "ab", "b"]);
        assert_eq!(names(rows(&tubes, Column::Ready, true, "")), ["b", "ab", "a"]);
        assert_eq!(names(rows(&tubes, Column::Puts, false, "")), ["b", "ab", "a"]);
        assert_eq!(names(rows(&tubes, Column::Name, false, "a")), ["a", "ab"]);
    }

    #[test]
    fn keys_change_the_controls() {
        let mut c = Controls { sort: Column::Name, descending: false, filter: String::new(), editing_filter: false };
        assert!(matches!(c.key(KeyCode::Char('s'), KeyModifiers::NONE), Action::Redraw));
        assert_eq!(c.sort, Column::Ready);
        c.key(KeyCode::Char('r'), KeyModifiers::NONE);
        assert!(c.descending);
        c.key(KeyCode::Char('/'), KeyModifiers::NONE);
        c.key(KeyCode::Char('q'), KeyModifiers::NONE);
        c.key(KeyCode::Enter, KeyModifiers::NONE);
        assert_eq!(c.filter, "q");
        assert!(matches!(c.key(KeyCode::Char('q'), KeyModifiers::NONE), Action::Quit));
        assert!(matches!(c.key(KeyCode::Char('c'), KeyModifiers::CONTROL), Action::Quit));
    }
}
