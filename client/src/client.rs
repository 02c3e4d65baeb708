//! [`Client`]: one connection, every command of the protocol as a typed async method.

use std::sync::Arc;
use std::time::Duration;

use runnerbean_proto::{self as proto, Command, Reply};
use tokio::sync::{mpsc, oneshot};

use crate::addr::Address;
use crate::conn::{self, COMMANDS_IN_FLIGHT_MAX, Request, Shared, Track, lock};
use crate::error::Error;
use crate::job::{Job, JobId, PutOptions};
use crate::stats::{JobStats, Stats, TubeStats};

/// How long [`Client::connect`] waits for the connection by default. A server on the same
/// network accepts in milliseconds; five seconds covers a loaded one without leaving a person
/// at a terminal waiting long for "cannot connect".
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a reply may take by default, beyond any wait the command itself asks for
/// (`reserve-with-timeout`). Servers answer in microseconds; ten seconds allows for a server
/// that syncs its log to a slow disk before replying, and still notices a dead peer.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest tube name beanstalkd accepts, in bytes.
pub const TUBE_NAME_BYTES_MAX: usize = 200;

/// Connection settings.
///
/// ```
/// use std::time::Duration;
/// use runnerbean_client::Options;
///
/// let options = Options::default().connect_timeout(Duration::from_secs(1)).read_timeout(Duration::from_secs(30));
/// assert_eq!(options.read_timeout_value(), Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options { connect_timeout: DEFAULT_CONNECT_TIMEOUT, read_timeout: DEFAULT_READ_TIMEOUT }
    }
}

impl Options {
    /// How long to wait for the connection to open ([`DEFAULT_CONNECT_TIMEOUT`] by default).
    pub fn connect_timeout(self, timeout: Duration) -> Options {
        Options { connect_timeout: timeout, ..self }
    }

    /// How long a reply may take, beyond the wait a `reserve-with-timeout` asks for
    /// ([`DEFAULT_READ_TIMEOUT`] by default). A plain `reserve` waits for as long as it takes.
    /// When the timeout passes the connection is closed: a reply that came later would be
    /// taken for the next command's.
    pub fn read_timeout(self, timeout: Duration) -> Options {
        Options { read_timeout: timeout, ..self }
    }

    /// The connect timeout.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The read timeout.
    pub fn read_timeout_value(&self) -> Duration {
        self.read_timeout
    }
}

/// A connection to a beanstalkd-protocol server.
///
/// Every method sends one command and waits for its reply. The methods take `&self` and a
/// `Client` is cheap to clone; clones share one connection, so commands from several tasks (or
/// several futures polled together) are pipelined: they are written without waiting for the
/// earlier replies, and each reply goes to its command, in order. At most 1024 commands are in
/// flight; more wait for a slot.
///
/// The connection carries server-side state that every clone shares: the tube puts go to
/// ([`use_tube`](Client::use_tube)), the tubes reserves take from ([`watch`](Client::watch)),
/// and the jobs it reserved. The server runs a connection's commands one at a time, so a
/// `reserve` that waits holds back every command sent after it on the same connection; give
/// workers their own `Client`.
///
/// Dropping a method's future before it finishes does not take the command back: it may
/// already have run, and its reply is read and thrown away.
///
/// # Reconnecting
/// A `Client` never reconnects by itself. When the connection fails (the server stops, the
/// network breaks, a reply times out) every command in flight and every later one returns the
/// error that closed it, for which [`Error::is_disconnect`] is true. [`Client::reconnect`]
/// opens a new connection to the same address with the same options and sets up the same used
/// and watched tubes. What cannot come back: jobs reserved on the old connection are released
/// by the server when it notices the close (or when their time-to-run passes), so touching,
/// releasing or deleting them on the new connection gets [`Error::NotFound`] once another
/// worker has them; and a command whose reply was lost may or may not have run (a `put` may
/// have inserted its job).
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runnerbean_client::Error> {
/// # let server = runnerbean_testserver::TestServer::runnerbean();
/// # let addr = server.addr();
/// use runnerbean_client::{Client, PutOptions};
///
/// let client = Client::connect(addr).await?;
/// client.use_tube("emails").await?;
/// let id = client.put(b"hello", PutOptions::default()).await?;
///
/// client.watch("emails").await?;
/// let job = client.reserve().await?;
/// assert_eq!((job.id, job.body.as_slice()), (id, &b"hello"[..]));
/// client.delete(job.id).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    addr: Address,
    options: Options,
    requests: mpsc::Sender<Request>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.inner.addr).field("closed", &self.is_closed()).finish()
    }
}

impl Client {
    /// Connects to `addr` (`HOST:PORT`, `HOST` for port 11300, or `unix:PATH`) with the default
    /// [`Options`]. It must be called inside a tokio runtime, which runs the connection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// assert_eq!(client.list_tube_used().await?, "default");
    ///
    /// let refused = Client::connect("127.0.0.1:1").await.unwrap_err();
    /// assert!(matches!(refused, Error::Connect { .. }));
    /// assert_eq!(refused.to_string(), "cannot connect to 127.0.0.1:1: connection refused");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        Client::connect_with(addr, Options::default()).await
    }

    /// Connects with the given [`Options`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean_unix();
    /// # let addr = server.addr();
    /// use std::time::Duration;
    /// use runnerbean_client::{Client, Options};
    ///
    /// // addr is "unix:/some/dir/beanstalk.sock" here.
    /// let options = Options::default().connect_timeout(Duration::from_secs(1));
    /// let client = Client::connect_with(addr, options).await?;
    /// assert_eq!(client.list_tubes().await?, ["default"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(addr: &str, options: Options) -> Result<Client, Error> {
        let addr: Address = addr.parse()?;
        Client::open(addr, options).await
    }

    async fn open(addr: Address, options: Options) -> Result<Client, Error> {
        let stream = addr.connect(options.connect_timeout).await?;
        let (requests, receiver) = mpsc::channel(COMMANDS_IN_FLIGHT_MAX);
        let shared = Arc::new(Shared::new());
        tokio::spawn(conn::run(stream, receiver, shared.clone(), options.read_timeout));
        Ok(Client { inner: Arc::new(Inner { addr, options, requests, shared }) })
    }

    /// Opens a new connection to the same address with the same options, using the same tube
    /// and watching the same tubes as this one did (as far as this client's `use`, `watch` and
    /// `ignore` commands changed them). See [Reconnecting](Client#reconnecting) for what does
    /// not carry over.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::Client;
    ///
    /// let client = Client::connect(addr).await?;
    /// client.use_tube("orders").await?;
    /// client.watch("orders").await?;
    /// client.ignore("default").await?;
    /// client.quit().await?;
    /// assert!(client.list_tube_used().await.unwrap_err().is_disconnect());
    ///
    /// let client = client.reconnect().await?;
    /// assert_eq!(client.list_tube_used().await?, "orders");
    /// assert_eq!(client.list_tubes_watched().await?, ["orders"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reconnect(&self) -> Result<Client, Error> {
        let session = lock(&self.inner.shared.session).clone();
        let client = Client::open(self.inner.addr.clone(), self.inner.options).await?;
        if session.used != "default" {
            client.use_tube(&session.used).await?;
        }
        for tube in session.watched.iter().filter(|tube| *tube != "default") {
            client.watch(tube).await?;
        }
        if !session.watched.iter().any(|tube| tube == "default") {
            client.ignore("default").await?;
        }
        Ok(client)
    }

    /// The address this client connected to.
    pub fn addr(&self) -> &Address {
        &self.inner.addr
    }

    /// The options this client connected with.
    pub fn options(&self) -> Options {
        self.inner.options
    }

    /// Whether the connection has closed; every command now fails with the error that closed it.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.shared.closed).is_some()
    }

    /// Sends one command and returns its reply's bytes.
    pub(crate) async fn call(&self, command: Command<'_>, track: Option<Track>) -> Result<Vec<u8>, Error> {
        let shared = &self.inner.shared;
        let permit = shared.slots.clone().acquire_owned().await.map_err(|_| shared.closed_error())?;
        let (request, answer) = request(command, track, permit);
        self.inner.requests.send(request).await.map_err(|_| shared.closed_error())?;
        answer.await.unwrap_or_else(|_| Err(shared.closed_error()))
    }

    /// Sends two commands back to back, with no command from any clone of this client between
    /// them on the wire, and returns both replies' bytes. The second reply is an error when the
    /// connection failed before it came.
    async fn call_pair(
        &self,
        first: (Command<'_>, Option<Track>),
        second: Command<'_>,
    ) -> Result<(Vec<u8>, Result<Vec<u8>, Error>), Error> {
        let shared = &self.inner.shared;
        // Both slots at once: tasks that each held one slot while waiting for a second could
        // take every slot and wait for each other forever.
        let mut permit = shared.slots.clone().acquire_many_owned(2).await.map_err(|_| shared.closed_error())?;
        let second_permit = permit.split(1).ok_or_else(|| shared.closed_error())?;
        let (mut request_one, first_answer) = request(first.0, first.1, permit);
        let (then, second_answer) = request(second, None, second_permit);
        request_one.then = Some(Box::new(then));
        self.inner.requests.send(request_one).await.map_err(|_| shared.closed_error())?;
        let first_reply = first_answer.await.unwrap_or_else(|_| Err(shared.closed_error()))?;
        let second_reply = second_answer.await.unwrap_or_else(|_| Err(shared.closed_error()));
        Ok((first_reply, second_reply))
    }

    /// Sends commands back to back, with no command from any clone of this client between them
    /// on the wire, and returns every reply's bytes in order; a reply is an error when the
    /// connection failed before it came. [`call_pair`](Client::call_pair) for any number.
    pub(crate) async fn call_chain(
        &self,
        commands: Vec<(Command<'_>, Option<Track>)>,
    ) -> Result<Vec<Result<Vec<u8>, Error>>, Error> {
        let shared = &self.inner.shared;
        // More slots than there are would never be granted.
        if commands.len() > COMMANDS_IN_FLIGHT_MAX {
            return Err(Error::InvalidArgument(format!("at most {COMMANDS_IN_FLIGHT_MAX} commands go together")));
        }
        let Ok(count @ 1..) = u32::try_from(commands.len()) else { return Ok(Vec::new()) };
        // Every slot at once, for the reason call_pair gives.
        let mut rest = Some(shared.slots.clone().acquire_many_owned(count).await.map_err(|_| shared.closed_error())?);
        let mut requests = Vec::with_capacity(commands.len());
        let mut answers = Vec::with_capacity(commands.len());
        let last = commands.len() - 1;
        for (at, (command, track)) in commands.into_iter().enumerate() {
            // Each command takes one slot of the permit; the last takes what is left (one).
            let permit = match (at == last, rest.as_mut()) {
                (false, Some(permit)) => permit.split(1),
                (true, _) => rest.take(),
                (false, None) => None,
            };
            let permit = permit.ok_or_else(|| shared.closed_error())?;
            let (request, answer) = request(command, track, permit);
            requests.push(request);
            answers.push(answer);
        }
        // Link them back to front: each request carries the ones that must follow it.
        let mut chain = None;
        while let Some(mut request) = requests.pop() {
            request.then = chain.map(Box::new);
            chain = Some(request);
        }
        let Some(chain) = chain else { return Ok(Vec::new()) };
        self.inner.requests.send(chain).await.map_err(|_| shared.closed_error())?;
        let mut replies = Vec::with_capacity(answers.len());
        for answer in answers {
            replies.push(answer.await.unwrap_or_else(|_| Err(shared.closed_error())));
        }
        Ok(replies)
    }

    /// `put`: adds a job with this body to the used tube and returns its id.
    ///
    /// Fails with [`Error::JobTooBig`] when the body is over the server's `max-job-size`,
    /// [`Error::Draining`] in drain mode, and [`Error::Buried`] (with the new job's id) when
    /// the server stored the job but had to bury it for lack of memory.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean_with(&["-z", "10"]);
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, PutOptions};
    ///
    /// // This server was started with `-z 10`: bodies of at most 10 bytes.
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"resize 1.png", PutOptions::default()).await;
    /// assert!(matches!(id, Err(Error::JobTooBig)));
    /// let id = client.put(b"resize", PutOptions::default().pri(10).delay(0).ttr(120)).await?;
    /// assert_eq!(client.stats_job(id).await?.ttr, 120);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(&self, body: &[u8], options: PutOptions) -> Result<JobId, Error> {
        let command = Command::Put { pri: options.pri, delay: options.delay, ttr: options.ttr, body };
        let frame = self.call(command, None).await?;
        match decode(&frame)? {
            Reply::Inserted(id) => Ok(JobId(id)),
            other => Err(refusal(other, "put")),
        }
    }

    /// Puts a job into `tube`, whatever tube this connection uses: the publisher's one call.
    /// `pri`, `delay` (seconds) and `ttr` (seconds) are those of [`PutOptions`]. Returns the new
    /// job's id.
    ///
    /// It sends `use TUBE` and `put` back to back, with no other command of any clone of this
    /// client between them, so tasks that share a client can publish to different tubes at
    /// once. The connection goes on using `tube` afterwards. It fails as [`put`](Client::put)
    /// does, and with [`Error::BadFormat`] or [`Error::InvalidArgument`] for a tube name the
    /// server or the protocol refuses (then no job is put).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, JobState};
    ///
    /// let publisher = Client::connect(addr).await?;
    /// let (mail, thumb) = tokio::join!(
    ///     publisher.publish("mail", b"welcome 7", 100, 0, 60),
    ///     publisher.publish("thumbnails", b"resize 9", 1024, 30, 120),
    /// );
    /// let (mail, thumb) = (publisher.stats_job(mail?).await?, publisher.stats_job(thumb?).await?);
    /// assert_eq!((mail.tube.as_str(), mail.pri, mail.state), ("mail", 100, JobState::Ready));
    /// assert_eq!((thumb.tube.as_str(), thumb.ttr, thumb.state), ("thumbnails", 120, JobState::Delayed));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, tube: &str, body: &[u8], pri: u32, delay: u32, ttr: u32) -> Result<JobId, Error> {
        let use_tube = (Command::Use(tube_arg(tube)?), Some(Track::Use(tube.to_owned())));
        let (used, put) = self.call_pair(use_tube, Command::Put { pri, delay, ttr, body }).await?;
        match decode(&used)? {
            Reply::Using(_) => {}
            // The put that followed a refused `use` went into the previous tube: take it back
            // rather than leave a job where nobody expects it. (The server parses the tube name
            // of `use` before anything else, so this only happens with a name it rejects.)
            other => {
                if let Ok(frame) = &put
                    && let Ok(Reply::Inserted(id)) = decode(frame)
                {
                    let _ = self.delete(JobId(id)).await;
                }
                return Err(refusal(other, "use"));
            }
        }
        match decode(&put?)? {
            Reply::Inserted(id) => Ok(JobId(id)),
            other => Err(refusal(other, "put")),
        }
    }

    /// Whether any connection other than this one watches `tube`: backq's check that workers
    /// are there before publishing, from `current-watching` of `stats-tube`. A worker that is
    /// busy with a job counts; [`has_waiting_workers`](Client::has_waiting_workers) counts only
    /// idle ones. A tube that does not exist has no workers. This connection's own watch (every
    /// connection starts watching `default`) is not counted.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::Client;
    ///
    /// let publisher = Client::connect(addr).await?;
    /// assert!(!publisher.has_workers("mail").await?);
    /// assert!(!publisher.has_workers("default").await?);
    ///
    /// let worker = Client::connect(addr).await?;
    /// worker.watch("mail").await?;
    /// assert!(publisher.has_workers("mail").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn has_workers(&self, tube: &str) -> Result<bool, Error> {
        let Some(stats) = self.tube_stats_if_any(tube).await? else { return Ok(false) };
        let own = u64::from(lock(&self.inner.shared.session).watched.iter().any(|t| t == tube));
        Ok(stats.current_watching > own)
    }

    /// Whether a connection is waiting in a `reserve` on `tube` right now (`current-waiting` of
    /// `stats-tube`): a worker is idle and would take a job at once. A tube that does not exist
    /// has none.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use std::time::Duration;
    /// use runnerbean_client::Client;
    ///
    /// let publisher = Client::connect(addr).await?;
    /// let worker = Client::connect(addr).await?;
    /// worker.watch("mail").await?;
    /// assert!(!publisher.has_waiting_workers("mail").await?);
    ///
    /// let waiting = tokio::spawn(async move { worker.reserve_with_timeout(5).await });
    /// while !publisher.has_waiting_workers("mail").await? {
    ///     tokio::time::sleep(Duration::from_millis(5)).await;
    /// }
    /// publisher.publish("mail", b"hello", 0, 0, 60).await?;
    /// assert_eq!(waiting.await.expect("join")?.body, b"hello");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn has_waiting_workers(&self, tube: &str) -> Result<bool, Error> {
        let stats = self.tube_stats_if_any(tube).await?;
        Ok(stats.is_some_and(|stats| stats.current_waiting > 0))
    }

    /// `stats-tube`, with a missing tube as `None`.
    async fn tube_stats_if_any(&self, tube: &str) -> Result<Option<TubeStats>, Error> {
        match self.stats_tube(tube).await {
            Ok(stats) => Ok(Some(stats)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `use`: puts go to this tube from now on (the server creates it if needed). Returns the
    /// tube's name as the server confirmed it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// assert_eq!(client.use_tube("thumbnails").await?, "thumbnails");
    /// // beanstalkd allows letters, digits and -+/;.$_() in names.
    /// assert!(matches!(client.use_tube("a*b").await, Err(Error::BadFormat)));
    /// // A space would split the command, so it is refused before anything is sent.
    /// assert!(matches!(client.use_tube("a b").await, Err(Error::InvalidArgument(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn use_tube(&self, tube: &str) -> Result<String, Error> {
        let frame = self.call(Command::Use(tube_arg(tube)?), Some(Track::Use(tube.to_owned()))).await?;
        match decode(&frame)? {
            Reply::Using(name) => Ok(name.to_owned()),
            other => Err(refusal(other, "use")),
        }
    }

    /// `reserve`: waits, as long as it takes, for a job from the watched tubes and reserves it.
    ///
    /// The read timeout does not apply, since the wait is the point. Fails with
    /// [`Error::DeadlineSoon`] when a job this connection holds is about to reach its
    /// time-to-run.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, PutOptions};
    ///
    /// let worker = Client::connect(addr).await?;
    /// let producer = Client::connect(addr).await?;
    /// let (job, id) = tokio::join!(worker.reserve(), async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    ///     producer.put(b"late", PutOptions::default()).await
    /// });
    /// assert_eq!(job?.id, id?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reserve(&self) -> Result<Job, Error> {
        let frame = self.call(Command::Reserve, None).await?;
        reserved(frame, "reserve")
    }

    /// `reserve-with-timeout`: like [`reserve`](Client::reserve), but gives up after `seconds`
    /// with [`Error::TimedOut`]; 0 takes a job only if one is ready now.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// assert!(matches!(client.reserve_with_timeout(0).await, Err(Error::TimedOut)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reserve_with_timeout(&self, seconds: u32) -> Result<Job, Error> {
        let frame = self.call(Command::ReserveWithTimeout(seconds), None).await?;
        reserved(frame, "reserve-with-timeout")
    }

    /// `reserve-job`: reserves this job, from any tube, if it is ready, delayed or buried.
    /// Needs beanstalkd 1.12 or later (older servers reply [`Error::UnknownCommand`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"later", PutOptions::default().delay(3600)).await?;
    /// assert_eq!(client.reserve_job(id).await?.body, b"later");
    /// // It is reserved now, so it cannot be reserved again.
    /// assert!(matches!(client.reserve_job(id).await, Err(Error::NotFound)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reserve_job(&self, id: JobId) -> Result<Job, Error> {
        let frame = self.call(Command::ReserveJob(id.0), None).await?;
        reserved(frame, "reserve-job")
    }

    /// `delete`: removes a job that is ready, delayed, buried, or reserved by this connection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"x", PutOptions::default()).await?;
    /// client.delete(id).await?;
    /// assert!(matches!(client.delete(id).await, Err(Error::NotFound)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self, id: JobId) -> Result<(), Error> {
        let frame = self.call(Command::Delete(id.0), None).await?;
        match decode(&frame)? {
            Reply::Deleted => Ok(()),
            other => Err(refusal(other, "delete")),
        }
    }

    /// `release`: gives back a job this connection reserved, with a new priority, ready again
    /// after `delay` seconds. [`Error::Buried`] means the server had to bury it instead (it was
    /// out of memory).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, JobState, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.put(b"retry me", PutOptions::default()).await?;
    /// let job = client.reserve().await?;
    /// client.release(job.id, 5, 60).await?;
    /// let stats = client.stats_job(job.id).await?;
    /// assert_eq!((stats.state, stats.pri, stats.releases), (JobState::Delayed, 5, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(&self, id: JobId, pri: u32, delay: u32) -> Result<(), Error> {
        let frame = self.call(Command::Release { id: id.0, pri, delay }, None).await?;
        match decode(&frame)? {
            Reply::Released => Ok(()),
            Reply::Buried => Err(Error::Buried(id)),
            other => Err(refusal(other, "release")),
        }
    }

    /// `bury`: sets aside a job this connection reserved, with a new priority, until it is
    /// kicked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.put(b"poison", PutOptions::default()).await?;
    /// let job = client.reserve().await?;
    /// client.bury(job.id, 0).await?;
    /// assert_eq!(client.peek_buried().await?.id, job.id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bury(&self, id: JobId, pri: u32) -> Result<(), Error> {
        let frame = self.call(Command::Bury { id: id.0, pri }, None).await?;
        match decode(&frame)? {
            Reply::Buried => Ok(()),
            other => Err(refusal(other, "bury")),
        }
    }

    /// `touch`: restarts the time-to-run of a job this connection reserved, for a worker that
    /// needs longer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"slow", PutOptions::default()).await?;
    /// assert!(matches!(client.touch(id).await, Err(Error::NotFound)));
    /// client.reserve().await?;
    /// client.touch(id).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn touch(&self, id: JobId) -> Result<(), Error> {
        let frame = self.call(Command::Touch(id.0), None).await?;
        match decode(&frame)? {
            Reply::Touched => Ok(()),
            other => Err(refusal(other, "touch")),
        }
    }

    /// `watch`: reserves take jobs from this tube too. Returns how many tubes are watched.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::Client;
    ///
    /// let client = Client::connect(addr).await?;
    /// assert_eq!(client.watch("emails").await?, 2);
    /// assert_eq!(client.watch("emails").await?, 2);
    /// assert_eq!(client.list_tubes_watched().await?, ["default", "emails"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(&self, tube: &str) -> Result<u64, Error> {
        let frame = self.call(Command::Watch(tube_arg(tube)?), Some(Track::Watch(tube.to_owned()))).await?;
        match decode(&frame)? {
            Reply::Watching(count) => Ok(count),
            other => Err(refusal(other, "watch")),
        }
    }

    /// `ignore`: reserves stop taking jobs from this tube. Returns how many tubes are still
    /// watched; [`Error::NotIgnored`] if it is the only one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// assert!(matches!(client.ignore("default").await, Err(Error::NotIgnored)));
    /// client.watch("emails").await?;
    /// assert_eq!(client.ignore("default").await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ignore(&self, tube: &str) -> Result<u64, Error> {
        let frame = self.call(Command::Ignore(tube_arg(tube)?), Some(Track::Ignore(tube.to_owned()))).await?;
        match decode(&frame)? {
            Reply::Watching(count) => Ok(count),
            other => Err(refusal(other, "ignore")),
        }
    }

    /// `peek`: the job with this id, in any state and any tube.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, JobId, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"look", PutOptions::default()).await?;
    /// assert_eq!(client.peek(id).await?.body, b"look");
    /// assert!(matches!(client.peek(JobId(999)).await, Err(Error::NotFound)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn peek(&self, id: JobId) -> Result<Job, Error> {
        let frame = self.call(Command::Peek(id.0), None).await?;
        found(frame, "peek")
    }

    /// `peek-ready`: the job of the used tube that would be reserved next.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.put(b"later", PutOptions::default().pri(100)).await?;
    /// let first = client.put(b"first", PutOptions::default().pri(1)).await?;
    /// assert_eq!(client.peek_ready().await?.id, first);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn peek_ready(&self) -> Result<Job, Error> {
        let frame = self.call(Command::PeekReady, None).await?;
        found(frame, "peek-ready")
    }

    /// `peek-delayed`: the delayed job of the used tube that becomes ready first.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// assert!(matches!(client.peek_delayed().await, Err(Error::NotFound)));
    /// let id = client.put(b"tomorrow", PutOptions::default().delay(86400)).await?;
    /// assert_eq!(client.peek_delayed().await?.id, id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn peek_delayed(&self) -> Result<Job, Error> {
        let frame = self.call(Command::PeekDelayed, None).await?;
        found(frame, "peek-delayed")
    }

    /// `peek-buried`: the oldest buried job of the used tube.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// assert!(matches!(client.peek_buried().await, Err(Error::NotFound)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn peek_buried(&self) -> Result<Job, Error> {
        let frame = self.call(Command::PeekBuried, None).await?;
        found(frame, "peek-buried")
    }

    /// `kick`: makes up to `bound` buried jobs of the used tube ready, or, when it has none
    /// buried, up to `bound` delayed ones. Returns how many it kicked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// for _ in 0..3 {
    ///     client.put(b"wait", PutOptions::default().delay(600)).await?;
    /// }
    /// assert_eq!(client.kick(2).await?, 2);
    /// assert_eq!(client.kick(10).await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn kick(&self, bound: u32) -> Result<u64, Error> {
        let frame = self.call(Command::Kick(bound), None).await?;
        match decode(&frame)? {
            Reply::KickedCount(count) => Ok(count),
            other => Err(refusal(other, "kick")),
        }
    }

    /// `kick-job`: makes this buried or delayed job ready, whatever its tube.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error, JobState, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"now", PutOptions::default().delay(600)).await?;
    /// client.kick_job(id).await?;
    /// assert_eq!(client.stats_job(id).await?.state, JobState::Ready);
    /// assert!(matches!(client.kick_job(id).await, Err(Error::NotFound)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn kick_job(&self, id: JobId) -> Result<(), Error> {
        let frame = self.call(Command::KickJob(id.0), None).await?;
        match decode(&frame)? {
            Reply::Kicked => Ok(()),
            other => Err(refusal(other, "kick-job")),
        }
    }

    /// `stats-job`: one job's state and counters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, JobState, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// let id = client.put(b"x", PutOptions::default().pri(7).ttr(30)).await?;
    /// let stats = client.stats_job(id).await?;
    /// assert_eq!((stats.id, stats.tube.as_str(), stats.state), (id, "default", JobState::Ready));
    /// assert_eq!((stats.pri, stats.ttr, stats.reserves), (7, 30, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stats_job(&self, id: JobId) -> Result<JobStats, Error> {
        let frame = self.call(Command::StatsJob(id.0), None).await?;
        match decode(&frame)? {
            Reply::Ok(doc) => JobStats::from_yaml(doc),
            other => Err(refusal(other, "stats-job")),
        }
    }

    /// `stats-tube`: one tube's counters; [`Error::NotFound`] if there is no such tube.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, PutOptions};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.put(b"a", PutOptions::default()).await?;
    /// client.put(b"b", PutOptions::default().delay(60)).await?;
    /// let tube = client.stats_tube("default").await?;
    /// assert_eq!((tube.name.as_str(), tube.current_jobs_ready, tube.current_jobs_delayed), ("default", 1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stats_tube(&self, tube: &str) -> Result<TubeStats, Error> {
        let frame = self.call(Command::StatsTube(tube_arg(tube)?), None).await?;
        match decode(&frame)? {
            Reply::Ok(doc) => TubeStats::from_yaml(doc),
            other => Err(refusal(other, "stats-tube")),
        }
    }

    /// `stats`: the server's counters.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Value};
    ///
    /// let client = Client::connect(addr).await?;
    /// let stats = client.stats().await?;
    /// assert_eq!(stats.current_connections, 1);
    /// assert_eq!(stats.max_job_size, 65535);
    /// // Every key, in the server's order, with typed values.
    /// assert_eq!(stats.fields()[0], ("current-jobs-urgent", Value::Count(0)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stats(&self) -> Result<Stats, Error> {
        let frame = self.call(Command::Stats, None).await?;
        match decode(&frame)? {
            Reply::Ok(doc) => Stats::from_yaml(doc),
            other => Err(refusal(other, "stats")),
        }
    }

    /// `list-tubes`: every tube that exists.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::Client;
    ///
    /// let client = Client::connect(addr).await?;
    /// client.use_tube("123").await?;
    /// assert_eq!(client.list_tubes().await?, ["default", "123"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_tubes(&self) -> Result<Vec<String>, Error> {
        let frame = self.call(Command::ListTubes, None).await?;
        list(frame, "list-tubes")
    }

    /// `list-tube-used`: the tube puts go to.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::Client;
    ///
    /// let client = Client::connect(addr).await?;
    /// assert_eq!(client.list_tube_used().await?, "default");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_tube_used(&self) -> Result<String, Error> {
        let frame = self.call(Command::ListTubeUsed, None).await?;
        match decode(&frame)? {
            Reply::Using(name) => Ok(name.to_owned()),
            other => Err(refusal(other, "list-tube-used")),
        }
    }

    /// `list-tubes-watched`: the tubes reserves take jobs from.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::Client;
    ///
    /// let client = Client::connect(addr).await?;
    /// assert_eq!(client.list_tubes_watched().await?, ["default"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_tubes_watched(&self) -> Result<Vec<String>, Error> {
        let frame = self.call(Command::ListTubesWatched, None).await?;
        list(frame, "list-tubes-watched")
    }

    /// `pause-tube`: no job is reserved from the tube for `seconds` (0 ends a pause).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.pause_tube("default", 60).await?;
    /// assert_eq!(client.stats_tube("default").await?.pause, 60);
    /// assert!(matches!(client.pause_tube("nothing-here", 60).await, Err(Error::NotFound)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn pause_tube(&self, tube: &str, seconds: u32) -> Result<(), Error> {
        let frame = self.call(Command::PauseTube(tube_arg(tube)?, seconds), None).await?;
        match decode(&frame)? {
            Reply::Paused => Ok(()),
            other => Err(refusal(other, "pause-tube")),
        }
    }

    /// `quit`: asks the server to close the connection, and waits until it has. Later commands
    /// fail with [`Error::ClosedByServer`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runnerbean_client::Error> {
    /// # let server = runnerbean_testserver::TestServer::runnerbean();
    /// # let addr = server.addr();
    /// use runnerbean_client::{Client, Error};
    ///
    /// let client = Client::connect(addr).await?;
    /// client.quit().await?;
    /// assert!(client.is_closed());
    /// assert!(matches!(client.stats().await, Err(Error::ClosedByServer)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn quit(&self) -> Result<(), Error> {
        match self.call(Command::Quit, None).await {
            Ok(_) | Err(Error::ClosedByServer) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A command encoded into a request that holds its slot.
fn request(
    command: Command<'_>,
    track: Option<Track>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> (Request, oneshot::Receiver<Result<Vec<u8>, Error>>) {
    let mut bytes = Vec::new();
    command.encode(&mut bytes);
    let (reply, answer) = oneshot::channel();
    let quit = matches!(command, Command::Quit);
    (Request { bytes, wait: command.waits(), quit, track, reply, permit, then: None }, answer)
}

/// A tube name as the protocol can carry it: not empty, at most 200 bytes, no spaces or
/// control characters (which would split or end the command line). Whether its characters
/// are allowed is the server's to say.
pub(crate) fn tube_arg(tube: &str) -> Result<&str, Error> {
    if tube.is_empty() {
        return Err(Error::InvalidArgument("a tube name cannot be empty".to_owned()));
    }
    if tube.len() > TUBE_NAME_BYTES_MAX {
        return Err(Error::InvalidArgument(format!("a tube name has at most {TUBE_NAME_BYTES_MAX} bytes")));
    }
    if tube.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::InvalidArgument(format!("tube name {tube:?} has a space or control character")));
    }
    Ok(tube)
}

/// Parses a frame the connection task has already checked.
pub(crate) fn decode(frame: &[u8]) -> Result<Reply<'_>, Error> {
    proto::parse(frame).map_err(|e| Error::Protocol(e.to_string()))
}

/// The error for a reply that is not the command's success: one of the server's error replies,
/// or a reply that does not answer this command at all.
pub(crate) fn refusal(reply: Reply<'_>, command: &str) -> Error {
    match reply {
        Reply::NotFound => Error::NotFound,
        Reply::BuriedId(id) => Error::Buried(JobId(id)),
        Reply::JobTooBig => Error::JobTooBig,
        Reply::Draining => Error::Draining,
        Reply::DeadlineSoon => Error::DeadlineSoon,
        Reply::TimedOut => Error::TimedOut,
        Reply::BadFormat => Error::BadFormat,
        Reply::UnknownCommand => Error::UnknownCommand,
        Reply::OutOfMemory => Error::OutOfMemory,
        Reply::InternalError => Error::InternalError,
        Reply::ExpectedCrlf => Error::ExpectedCrlf,
        Reply::NotIgnored => Error::NotIgnored,
        other => Error::UnexpectedReply(format!("{other:?} to {command}")),
    }
}

/// The job of a `RESERVED` reply.
fn reserved(frame: Vec<u8>, command: &str) -> Result<Job, Error> {
    match decode(&frame)? {
        Reply::Reserved { id, body } => {
            let len = body.len();
            Ok(Job { id: JobId(id), body: body_of(frame, len) })
        }
        other => Err(refusal(other, command)),
    }
}

/// The job of a `FOUND` reply.
pub(crate) fn found(frame: Vec<u8>, command: &str) -> Result<Job, Error> {
    match decode(&frame)? {
        Reply::Found { id, body } => {
            let len = body.len();
            Ok(Job { id: JobId(id), body: body_of(frame, len) })
        }
        other => Err(refusal(other, command)),
    }
}

/// The body of a frame whose body is `len` bytes, taken in place: a body sits between the
/// reply line and the final CRLF.
fn body_of(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    let end = frame.len() - 2;
    frame.truncate(end);
    frame.drain(..end - len);
    frame
}

/// The names of a `list-*` reply.
pub(crate) fn list(frame: Vec<u8>, command: &str) -> Result<Vec<String>, Error> {
    match decode(&frame)? {
        Reply::Ok(doc) => {
            let text =
                std::str::from_utf8(doc).map_err(|_| Error::Protocol(format!("{command} reply is not UTF-8")))?;
            crate::yaml::sequence(text).map_err(|e| Error::Protocol(format!("{command} reply: {e}")))
        }
        other => Err(refusal(other, command)),
    }
}
