//! Drawbridge's records: the access log (one JSON line per request) and the audit trail (one
//! JSON line per authorization decision). Each event is serialized where it is recorded and
//! its line appended to its log's batch; a writer thread takes whole batches off the request
//! path. The batch is bounded, and what it had to drop is counted.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

pub mod chain;
mod line;
pub mod metrics;

pub use chain::{LineSink, Lines};
pub use line::Line;

/// The phase of the pipeline that refused a request (named in lines by [`Phase::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The connection itself: a TLS handshake refused (a bad client certificate).
    Accept,
    /// Reading the request: the HTTP parser refused it, body too large, malformed framing.
    Parse,
    /// Path or header checks (ambiguous path, smuggling-shaped framing).
    Sanitize,
    /// No route matched.
    Route,
    /// Credentials were missing or did not pass.
    Authenticate,
    /// A second factor was missing, or too old, for what was asked.
    Verify,
    /// The policies did not allow the request, or could not read it.
    Authorize,
    /// Preparing the request for the upstream (signing its identity) failed.
    Mutate,
    /// The upstream failed or no endpoint was available.
    Forward,
    /// The decision could not be recorded where it must be (`[audit] required`).
    Record,
    /// The client address or the principal is blocked (a detector fired, or an operator).
    Block,
}

/// The id Drawbridge gives a request: ASCII, at most [`RequestId::MAX`] bytes, held in place.
/// Every request is given one; a string of its own would be one more allocation, and one
/// more line of memory, on every request's path. Held as text, so reading it (the access
/// log, the identity assertion) costs no UTF-8 check.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RequestId(arrayvec::ArrayString<{ RequestId::MAX }>);

impl RequestId {
    /// The longest id.
    pub const MAX: usize = 32;

    /// `id`, when it is ASCII and at most [`RequestId::MAX`] bytes long.
    pub fn new(id: &str) -> Option<Self> {
        if !id.is_ascii() {
            return None;
        }
        arrayvec::ArrayString::from(id).ok().map(Self)
    }

    /// The id's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One access-log line. Holds no header values: nothing that could carry a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AccessEvent {
    /// When the request arrived, RFC 3339 in UTC.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The id Drawbridge gave the request (sent upstream as `X-Request-Id`).
    pub request_id: RequestId,
    /// The request's trace, when `[tracing]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Listener name.
    pub listener: Arc<str>,
    /// The host the client asked for (`Host` or `:authority`, without port), as far as the
    /// request was read; `null` when it was refused before its headers were.
    pub host: Option<Arc<str>>,
    /// Route name, when one matched.
    pub route: Option<Arc<str>>,
    /// Client address (`ip:port` of the peer).
    pub client: Arc<str>,
    /// The forwarded-for client, when a trusted proxy named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
    /// Who was admitted: `authenticator:principal id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// Normalised path (no query: queries can carry secrets).
    pub path: String,
    /// HTTP version the client spoke.
    pub protocol: &'static str,
    /// Status sent to the client.
    pub status: u16,
    /// gRPC status, when Drawbridge answered a gRPC call itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// Response body bytes sent to the client (a tunnel's: every byte it relayed to the
    /// client).
    pub bytes_sent: u64,
    /// A tunnel's bytes relayed from the client; absent for ordinary requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// Upstream endpoint that served the request.
    pub upstream: Option<Arc<str>>,
    /// Microseconds from request arrival to the end of the response (an integer: no float
    /// noise in the log).
    pub duration_us: u64,
    /// The phase that refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why the request was refused, or why the upstream failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One authorization decision (`"log": "audit"`). Says who asked to do what to which route,
/// what was decided and by which policies; never a credential. It borrows what the request
/// already holds: it is serialized where it is recorded, so nothing is copied for it
/// ([`AuditEvent::into_owned`] keeps one for later).
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent<'a> {
    /// When the request arrived, RFC 3339 in UTC.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Always `audit`, to tell these lines from access-log lines in a shared stream.
    pub log: &'static str,
    /// The request id (also in the access log and sent upstream as `X-Request-Id`).
    pub request_id: Cow<'a, str>,
    /// The request's trace, when `[tracing]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Cow<'a, str>>,
    /// The configuration version (a hash of the config and its policy files).
    pub version: Cow<'a, str>,
    /// Who asked.
    pub principal: AuditPrincipal<'a>,
    /// The Cedar action (`GET`, `connect`, `grpc`...).
    pub action: &'static str,
    /// The route (the Cedar resource).
    pub resource: Cow<'a, str>,
    /// The upstream the route leads to.
    pub upstream: Cow<'a, str>,
    /// Normalised path (no query).
    pub path: Cow<'a, str>,
    /// Client address.
    pub client: Cow<'a, str>,
    /// `allow` or `deny`; `close` when an admitted tunnel was ended (its credential expired
    /// or was revoked, or it reached its maximum lifetime).
    pub decision: &'static str,
    /// Why a tunnel was closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// The policies that decided (permits when allowed, forbids when forbidden).
    pub policies: Cow<'a, [String]>,
    /// Policies that failed to evaluate, or why no evaluation was possible.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub errors: Cow<'a, [String]>,
    /// The shadow policies' verdict, when a shadow set is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<AuditShadow<'a>>,
    /// The second factor the request needed (by the route's `mfa` or by the policies), and
    /// the one the caller presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa: Option<AuditMfa>,
}

/// A second factor in an audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditMfa {
    /// The factors that would each have done (`totp`, `webauthn`, `recovery_code`, `idp`);
    /// for an attempt at a factor, the one attempted.
    pub required: Vec<&'static str>,
    /// How lately it had to be done, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// The caller's latest factor among those, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presented: Option<&'static str>,
    /// That factor's age, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<u64>,
    /// Whether it was enough.
    pub satisfied: bool,
}

/// The caller in an audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPrincipal<'a> {
    /// Its id.
    pub id: Cow<'a, str>,
    /// `user`, `service` or `api_key`.
    pub kind: &'static str,
    /// The authenticator that admitted it.
    pub authenticator: Cow<'a, str>,
    /// Its groups.
    pub groups: Cow<'a, [String]>,
}

/// The shadow policies' verdict.
#[derive(Debug, Clone, Serialize)]
pub struct AuditShadow<'a> {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The shadow policies that decided.
    pub policies: Cow<'a, [String]>,
    /// Shadow policies that failed to evaluate.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub errors: Cow<'a, [String]>,
    /// Whether it differs from the enforced decision.
    pub disagrees: bool,
}

/// An owned copy of what `c` borrows.
fn owned<T: ToOwned + ?Sized>(c: Cow<'_, T>) -> Cow<'static, T> {
    Cow::Owned(c.into_owned())
}

impl AuditEvent<'_> {
    /// The event with nothing borrowed, to keep past the request (a tunnel's, written when
    /// it ends).
    pub fn into_owned(self) -> AuditEvent<'static> {
        AuditEvent {
            time: self.time,
            log: self.log,
            request_id: owned(self.request_id),
            trace_id: self.trace_id.map(owned),
            version: owned(self.version),
            principal: AuditPrincipal {
                id: owned(self.principal.id),
                kind: self.principal.kind,
                authenticator: owned(self.principal.authenticator),
                groups: owned(self.principal.groups),
            },
            action: self.action,
            resource: owned(self.resource),
            upstream: owned(self.upstream),
            path: owned(self.path),
            client: owned(self.client),
            decision: self.decision,
            reason: self.reason.map(owned),
            policies: owned(self.policies),
            errors: owned(self.errors),
            shadow: self.shadow.map(|s| AuditShadow {
                decision: s.decision,
                policies: owned(s.policies),
                errors: owned(s.errors),
                disagrees: s.disagrees,
            }),
            mfa: self.mfa,
        }
    }
}

/// `t` in RFC 3339; `null` for a time RFC 3339 cannot write (before 1970 or past 9999: a
/// clock gone that wrong is not a reason to lose the event, nor to stop serving).
fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let mut text = [0u8; STAMP];
    match stamp(*t, &mut text) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_none(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
const STAMP: usize = 27;

thread_local! {
    /// The second last written on this thread and its `YYYY-MM-DDTHH:MM:SS`: every event of
    /// that second starts the same, so the date is worked out once a second, not per event.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `t` as RFC 3339 in UTC with microseconds, as humantime writes it, into `out`; `None`
/// for a time it cannot be written for (before 1970 or past 9999).
fn stamp(t: SystemTime, out: &mut [u8; STAMP]) -> Option<&str> {
    if !write_stamp(t, out) {
        return None;
    }
    std::str::from_utf8(out).ok()
}

/// Writes `t` as [`stamp`] does (ASCII digits and punctuation); false, with nothing
/// written, for a time it cannot be written for.
fn write_stamp(t: SystemTime, out: &mut [u8; STAMP]) -> bool {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    let secs = since.as_secs();
    if secs >= YEAR_10000 {
        return false;
    }
    let (cached, mut date) = SECOND.get();
    if cached != secs {
        let whole = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + since);
        let whole = whole.to_string();
        let Some(whole) = whole.as_bytes().get(..19) else {
            return false;
        };
        date.copy_from_slice(whole);
        SECOND.set((secs, date));
    }
    out[..19].copy_from_slice(&date);
    out[19] = b'.';
    let mut micros = since.subsec_micros();
    for digit in out[20..26].iter_mut().rev() {
        // A digit: the remainder of a division by ten.
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out[26] = b'Z';
    true
}

/// Where access-log lines are written.
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A writer (a file opened for append).
    Writer(Box<dyn Write + Send>),
    /// Nowhere.
    Off,
}

/// A JSON-lines log's sending side: cheap to clone, never waits on the sink. Events are
/// serialized where they are recorded and their lines appended to one batch, which the
/// writer takes whole: a line costs its serialization and a copy under a lock held for the
/// copy alone, with no allocation and no hand-over per event.
pub struct JsonLog<T> {
    /// Shared by every clone; `None` for a log that writes nothing.
    senders: Option<Arc<Senders>>,
    state: Arc<State>,
    /// Covariant: a log of events that may borrow for any lifetime takes ones that borrow
    /// for a shorter one (they are serialized before `record` returns).
    events: std::marker::PhantomData<fn() -> T>,
}

/// Held by a log's senders: when the last one goes, its writer writes what is queued, seals
/// it and ends.
struct Senders(Arc<State>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.wake.closing.store(true, Ordering::SeqCst);
        self.0.wake.wake_now();
    }
}

/// Lines queued for the writer, and the senders waiting to hear that theirs was written.
#[derive(Default)]
struct Batch {
    /// Each line ended by a newline (a JSON line never holds a raw one).
    lines: Vec<u8>,
    /// The offset just past each line's newline.
    ends: Vec<usize>,
    /// Told at the flush after their lines are written.
    acks: Vec<Ack>,
}

impl Batch {
    fn with_room() -> Self {
        Self {
            lines: Vec::with_capacity(BATCH),
            ends: Vec::with_capacity(BATCH / LINE),
            ..Self::default()
        }
    }
}

/// Told whether an event was written (and flushed to the sink).
type Ack = tokio::sync::oneshot::Sender<bool>;

/// What the senders and the writer share.
#[derive(Default)]
struct State {
    /// The lines the senders append to and the writer takes.
    batch: Mutex<Batch>,
    dropped: AtomicU64,
    /// Events queued and not yet written.
    queued: AtomicU64,
    /// The latest lines written, newest last (the writer keeps them, off the request path).
    recent: Recent,
    /// Flushes asked for and flushes done: `flush` waits until the writer catches up.
    flushes: (AtomicU64, AtomicU64),
    /// A flush that also seals the sink was asked for (at shutdown).
    seal: std::sync::atomic::AtomicBool,
    /// How the writer thread sleeps when there is nothing to write, and is woken.
    wake: Wake,
    /// Cleared while the sink cannot be written (the last write or flush failed).
    writable: std::sync::atomic::AtomicBool,
    /// Record the drops as an event of their own when the queue drains.
    note_drops: bool,
}

impl State {
    fn batch(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Clone for JsonLog<T> {
    fn clone(&self) -> Self {
        Self {
            senders: self.senders.clone(),
            state: self.state.clone(),
            events: std::marker::PhantomData,
        }
    }
}

/// The writer's sleep. While events keep coming it polls the queue every [`POLL_EVERY`]
/// (waking it per event, a futex call and a context switch on the core serving the request,
/// would cost more than writing the event); with nothing queued it parks until a sender or
/// a flush wakes it, so an idle log never wakes at all.
#[derive(Default)]
struct Wake {
    parked: std::sync::atomic::AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Times the writer woke from a sleep, for tests of the idle writer.
    wakes: AtomicU64,
    /// The last sender is gone: write what is queued and end.
    closing: std::sync::atomic::AtomicBool,
}

impl Wake {
    /// Wakes the writer if it is parked. The fence pairs with the writer's: either it sees
    /// the event just queued before it parks, or this sees it parked.
    fn nudge(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed)
            && self.parked.swap(false, Ordering::AcqRel)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// Wakes the writer whether it is parked or between batches.
    fn wake_now(&self) {
        self.parked.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// The access log: one line per request.
pub type AccessLog = JsonLog<AccessEvent>;

/// The audit trail: one line per authorization decision.
pub type AuditLog = JsonLog<AuditEvent<'static>>;

/// Queue length between the request path and the writer thread: events queued and not yet
/// written, counted in [`State::queued`]; past it, events are dropped and counted.
pub const QUEUE: usize = 16 * 1024;

/// Room made for a line up front: most access and audit lines fit.
const LINE: usize = 512;

/// Room a batch starts with, and keeps between bursts (a busy log's batch grows to what it
/// takes, and is let back down to this once written).
const BATCH: usize = 64 * 1024;

thread_local! {
    /// Where this thread serializes an event before appending its line to a batch: the
    /// lock is held for the copy, not the serialization.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LINE));
}

impl<T: Line> JsonLog<T> {
    /// Starts a writer thread for `sink`.
    pub fn start(sink: Sink) -> std::io::Result<Self> {
        Self::start_keeping(sink, 0)
    }

    /// Starts a writer thread for `sink` that also keeps the latest `keep` lines in memory
    /// (the admin API's recent decisions).
    pub fn start_keeping(sink: Sink, keep: usize) -> std::io::Result<Self> {
        let writer: Box<dyn Write + Send> = match sink {
            Sink::Off => return Ok(Self::off()),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::Writer(w) => w,
        };
        let plain = chain::Plain(std::io::BufWriter::with_capacity(64 * 1024, writer));
        Self::start_lines(Box::new(plain), keep, false)
    }

    /// Starts a writer thread for `sink` (a hash-chained trail, say), keeping the latest
    /// `keep` lines in memory; with `note_drops`, events dropped for a full queue are
    /// recorded as an event of their own (`"action": "audit.dropped"`) once it drains.
    pub fn start_lines(
        sink: Box<dyn LineSink>,
        keep: usize,
        note_drops: bool,
    ) -> std::io::Result<Self> {
        let state = Arc::new(State {
            recent: Recent {
                lines: Default::default(),
                keep,
            },
            batch: Mutex::new(Batch::with_room()),
            writable: true.into(),
            note_drops,
            ..State::default()
        });
        let handle = std::thread::Builder::new()
            .name(writer_name(std::any::type_name::<T>()))
            .spawn({
                let state = state.clone();
                move || write_loop(sink, &state)
            })?;
        let _ = state.wake.thread.set(handle.thread().clone());
        Ok(Self {
            senders: Some(Arc::new(Senders(state.clone()))),
            state,
            events: std::marker::PhantomData,
        })
    }

    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            senders: None,
            state: Arc::default(),
            events: std::marker::PhantomData,
        }
    }

    /// Queues one event; a full queue drops it and counts the drop. Whether it was queued.
    pub fn record(&self, event: T) -> bool {
        if !self.enqueue(&event, None) {
            return false;
        }
        self.state.wake.nudge();
        true
    }

    /// Appends an event's line to the batch unless the queue is full or the event cannot be
    /// serialized (a drop, counted). Its place is counted before it is appended, so the
    /// writer never counts it out first.
    fn enqueue(&self, event: &T, ack: Option<Ack>) -> bool {
        if self.senders.is_none() {
            return false;
        }
        let queued = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut line) => self.append(&mut line, event, ack),
            // Serializing an event recorded another: it gets a line of its own.
            Err(_) => self.append(&mut Vec::with_capacity(LINE), event, ack),
        });
        if !queued {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Serializes `event` into `line`, then appends it to the batch if there is room.
    fn append(&self, line: &mut Vec<u8>, event: &T, ack: Option<Ack>) -> bool {
        line.clear();
        if event.write_json(line).is_err() {
            return false;
        }
        line.push(b'\n');
        let state = &*self.state;
        let room = state.queued.fetch_add(1, Ordering::Relaxed) < QUEUE as u64;
        if room {
            let mut batch = state.batch();
            batch.lines.extend_from_slice(line);
            let end = batch.lines.len();
            batch.ends.push(end);
            batch.acks.extend(ack);
        } else {
            state.queued.fetch_sub(1, Ordering::Relaxed);
        }
        if line.capacity() > BATCH {
            // One outsized event does not keep its room on every thread that saw one.
            *line = Vec::with_capacity(LINE);
        }
        room
    }

    /// Queues one event and wakes the writer at once; the answer says whether it was
    /// written and flushed to the sink. `None` when it could not even be queued.
    pub fn record_acked(&self, event: T) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        self.senders.as_ref()?;
        let (ack, written) = tokio::sync::oneshot::channel();
        if !self.enqueue(&event, Some(ack)) {
            return None;
        }
        self.state.wake.wake_now();
        Some(written)
    }

    /// Whether events go anywhere (`off` drops them unwritten): lets a caller skip building
    /// them.
    pub fn enabled(&self) -> bool {
        self.senders.is_some()
    }

    /// Whether the sink takes what is written: false from a failed write until a write
    /// succeeds again.
    pub fn writable(&self) -> bool {
        self.senders.is_some() && self.state.writable.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until every event queued before the call is written and
    /// flushed: at shutdown, so the last decisions are not lost with the process.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        if self.senders.is_none() {
            return true;
        }
        let (asked, done) = &self.state.flushes;
        let ticket = asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.wake.wake_now();
        let deadline = std::time::Instant::now() + timeout;
        while done.load(Ordering::SeqCst) < ticket {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        true
    }

    /// As [`JsonLog::flush`], then seals what was written (a chained trail's signed head).
    pub fn seal(&self, timeout: std::time::Duration) -> bool {
        self.state.seal.store(true, Ordering::SeqCst);
        self.flush(timeout)
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// The latest lines written (as many as it keeps), oldest first.
    pub fn recent(&self) -> Vec<Arc<str>> {
        self.state
            .recent
            .lines()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into())
            .collect()
    }

    /// Events queued and not yet written.
    pub fn depth(&self) -> u64 {
        self.state.queued.load(Ordering::Relaxed)
    }

    /// How often the writer woke from a sleep since it started.
    pub fn writer_wakes(&self) -> u64 {
        self.state.wake.wakes.load(Ordering::Relaxed)
    }
}

/// The writer thread's name: its events' type, without path or parameters, then `-log`
/// (`AuditEvent-log`), short enough for the system to show whole.
fn writer_name(events: &str) -> String {
    let plain = events.split('<').next().unwrap_or(events);
    format!("{}-log", plain.rsplit("::").next().unwrap_or("json"))
}

/// The latest lines a log wrote, as written (JSON, so UTF-8): each kept line reuses the
/// buffer of the one it replaces, as this runs for every line.
#[derive(Default)]
struct Recent {
    lines: std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>,
    keep: usize,
}

impl Recent {
    fn lines(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Vec<u8>>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the last of `lines`.
    fn keep(&self, lines: Lines<'_>) {
        if self.keep == 0 {
            return;
        }
        let mut kept = self.lines();
        for line in lines.each(lines.len().saturating_sub(self.keep)) {
            let mut slot = if kept.len() == self.keep {
                kept.pop_front().unwrap_or_default()
            } else {
                Vec::new()
            };
            slot.clear();
            slot.extend_from_slice(line);
            kept.push_back(slot);
        }
    }
}

/// How often the writer collects queued events while they keep coming. It never sleeps on
/// the queue itself (see [`Wake`]): the request path stays an enqueue, and events reach the
/// sink within this interval.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The writer's side: hands each line (serialized by its sender) to the sink.
struct Writer<'a> {
    sink: Box<dyn LineSink>,
    state: &'a State,
    /// Drops already recorded as an event.
    noted: u64,
    failed: bool,
    /// Senders waiting to hear that their event was written, told at the next flush.
    acks: Vec<Ack>,
}

impl Writer<'_> {
    /// Writes a batch taken from the senders (its lines serialized by them), and takes its
    /// senders' acknowledgements to tell at the next flush. How many lines it held.
    fn batch(&mut self, batch: &mut Batch) -> u64 {
        let lines = Lines::new(&batch.lines, &batch.ends);
        if !lines.is_empty() {
            self.state.recent.keep(lines);
            if let Err(e) = self.sink.lines(lines) {
                self.fail(&e);
            }
        }
        let count = lines.len() as u64;
        self.acks.append(&mut batch.acks);
        batch.lines.clear();
        batch.lines.shrink_to(BATCH);
        batch.ends.clear();
        batch.ends.shrink_to(BATCH / LINE);
        count
    }

    /// Writes an event of the writer's own (a note of drops: rare).
    fn event<T: Serialize>(&mut self, event: &T) {
        match serde_json::to_vec(event) {
            Ok(mut line) => {
                line.push(b'\n');
                let end = [line.len()];
                let lines = Lines::new(&line, &end);
                self.state.recent.keep(lines);
                if let Err(e) = self.sink.lines(lines) {
                    self.fail(&e);
                }
            }
            Err(_) => self.failed = true,
        }
    }

    /// Records drops not yet recorded, as an event of their own.
    fn note_drops(&mut self) {
        let dropped = self.state.dropped.load(Ordering::Relaxed);
        if !self.state.note_drops || dropped == self.noted {
            return;
        }
        let event = serde_json::json!({
            "time": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "log": "audit",
            "action": "audit.dropped",
            "dropped": dropped - self.noted,
            "reason": "the audit queue was full: these events were not recorded",
        });
        self.noted = dropped;
        self.event(&event);
    }

    fn fail(&mut self, e: &std::io::Error) {
        if !self.failed {
            tracing::warn!(error = %e, "log write failed");
        }
        self.failed = true;
        self.state.writable.store(false, Ordering::Relaxed);
    }

    fn flush(&mut self, seal: bool) {
        let done = if seal {
            self.sink.seal()
        } else {
            self.sink.flush()
        };
        match done {
            Err(e) => self.fail(&e),
            Ok(()) if !self.failed => self.state.writable.store(true, Ordering::Relaxed),
            Ok(()) => {}
        }
        for ack in self.acks.drain(..) {
            let _ = ack.send(!self.failed);
        }
        self.failed = false;
    }
}

fn write_loop(sink: Box<dyn LineSink>, state: &State) {
    let mut w = Writer {
        sink,
        state,
        noted: 0,
        failed: false,
        acks: Vec::new(),
    };
    let wake = &state.wake;
    let flushes = &state.flushes;
    // The batch the senders append to and the one being written trade places.
    let mut taken = Batch::with_room();
    loop {
        // Read before taking: everything queued before this ask is in the batch taken.
        let asked = flushes.0.load(Ordering::SeqCst);
        std::mem::swap(&mut *state.batch(), &mut taken);
        let written = w.batch(&mut taken);
        if written > 0 {
            state.queued.fetch_sub(written, Ordering::Relaxed);
        }
        w.note_drops();
        if wake.closing.load(Ordering::SeqCst) {
            // No sender is left: what they queued since the batch above is written too,
            // then sealed.
            std::mem::swap(&mut *state.batch(), &mut taken);
            let last = w.batch(&mut taken);
            state.queued.fetch_sub(last, Ordering::Relaxed);
            w.flush(true);
            flushes.1.store(asked, Ordering::SeqCst);
            break;
        }
        let seal =
            asked > flushes.1.load(Ordering::SeqCst) && state.seal.swap(false, Ordering::SeqCst);
        if written > 0 || seal || asked > flushes.1.load(Ordering::SeqCst) {
            w.flush(seal);
        }
        flushes.1.store(asked, Ordering::SeqCst);
        if written > 0 {
            // Busy: collect the next batch after an interval, unless a flush is waited for.
            if flushes.0.load(Ordering::SeqCst) == asked {
                std::thread::park_timeout(POLL_EVERY);
                wake.wakes.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        // Idle: park until a sender or a flush wakes us.
        wake.parked.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !state.batch().ends.is_empty() {
            wake.parked.store(false, Ordering::Relaxed);
            continue;
        }
        while wake.parked.load(Ordering::Acquire)
            && flushes.0.load(Ordering::SeqCst) == asked
            && !wake.closing.load(Ordering::SeqCst)
        {
            std::thread::park();
        }
        wake.parked.store(false, Ordering::Relaxed);
        wake.wakes.fetch_add(1, Ordering::Relaxed);
    }
    let _ = w.sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(i: usize) -> AuditEvent<'static> {
        AuditEvent {
            time: SystemTime::UNIX_EPOCH,
            log: "audit",
            request_id: format!("r{i}").into(),
            trace_id: None,
            version: "v".into(),
            principal: AuditPrincipal {
                id: "alice".into(),
                kind: "user",
                authenticator: "corp".into(),
                groups: vec!["staff".into()].into(),
            },
            action: "GET",
            resource: "orders".into(),
            upstream: "shop".into(),
            path: "/orders".into(),
            client: "127.0.0.1:1".into(),
            decision: "deny",
            reason: None,
            policies: Cow::Borrowed(&[]),
            errors: Cow::Borrowed(&[]),
            shadow: None,
            mfa: None,
        }
    }

    /// An idle log's writer sleeps until there is something to write (it polled every 2 ms
    /// forever); an event wakes it, and it is written promptly.
    #[test]
    fn an_idle_writer_does_not_wake() {
        let buf = Shared::default();
        let log: AuditLog = JsonLog::start(Sink::Writer(Box::new(buf.clone()))).expect("start");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let idle = log.writer_wakes();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(log.writer_wakes(), idle, "woke while idle");
        let start = std::time::Instant::now();
        log.record(event(1));
        while buf.0.lock().expect("lock").is_empty() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "never written"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Written, then idle again: a wake for the event and at most one after its batch.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = log.writer_wakes();
        assert!(after <= idle + 2, "{idle} -> {after}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(log.writer_wakes(), after, "woke while idle again");
    }

    /// Log times are written as humantime writes them, across second, day, year and
    /// century boundaries, at whole seconds and at the last microsecond. Times RFC 3339
    /// cannot write (before 1970, from the year 10000) have no stamp.
    #[test]
    fn timestamps_are_written_as_humantime_writes_them() {
        use std::time::Duration;
        let at = |secs: u64, micros: u32| {
            SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999)
        };
        let mut times = vec![SystemTime::UNIX_EPOCH];
        for secs in [
            0,
            59,
            86_399,
            86_400,
            951_782_399, // 2000-02-28T23:59:59
            951_868_800, // 2000-03-01
            1_796_083_199,
            1_796_083_200,
            4_102_444_799, // 2099-12-31T23:59:59
            253_402_300_799,
        ] {
            for micros in [0, 1, 10, 123_456, 999_999] {
                times.push(at(secs, micros));
            }
        }
        // Back and forth over one second, so the cached date is replaced and reused.
        times.extend([at(100, 5), at(101, 5), at(100, 6), at(100, 7)]);
        for t in times {
            let mut out = [0u8; STAMP];
            let want = humantime::format_rfc3339_micros(t).to_string();
            assert_eq!(stamp(t, &mut out), Some(want.as_str()), "{t:?}");
            let json = serde_json::to_string(&AccessEventTime(t)).expect("json");
            assert_eq!(json, format!("\"{want}\""));
        }
        let mut out = [0u8; STAMP];
        assert_eq!(stamp(at(253_402_300_800, 0), &mut out), None);
        assert_eq!(
            stamp(SystemTime::UNIX_EPOCH - Duration::from_secs(1), &mut out),
            None
        );
    }

    /// A time as the logs serialize it.
    struct AccessEventTime(SystemTime);

    impl Serialize for AccessEventTime {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            rfc3339(&self.0, s)
        }
    }

    /// Writer threads are named after their events, lifetimes and paths left out.
    #[test]
    fn writer_threads_are_named_after_their_events() {
        assert_eq!(
            writer_name(std::any::type_name::<AuditEvent<'static>>()),
            "AuditEvent-log"
        );
        assert_eq!(
            writer_name(std::any::type_name::<AccessEvent>()),
            "AccessEvent-log"
        );
        assert_eq!(writer_name("a::B<c::D>"), "B-log");
    }

    /// A sink that waits until it is let go: the queue fills behind it.
    struct Gated {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Shared,
    }

    impl LineSink for Gated {
        fn line(&mut self, json: &[u8]) -> std::io::Result<()> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            while !*open {
                open = cv
                    .wait(open)
                    .map_err(|_| std::io::Error::other("poisoned"))?;
            }
            self.out.write_all(json)?;
            self.out.write_all(b"\n")
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Events dropped for a full queue are counted, and recorded as an event of their own
    /// once the queue drains: the trail says what it lacks.
    #[test]
    fn drops_are_recorded_when_the_queue_drains() {
        let open: Arc<(Mutex<bool>, std::sync::Condvar)> = Arc::default();
        let out = Shared::default();
        let log: AuditLog = JsonLog::start_lines(
            Box::new(Gated {
                open: open.clone(),
                out: out.clone(),
            }),
            0,
            true,
        )
        .expect("start");
        for i in 0..QUEUE + 100 {
            log.record(event(i));
        }
        let dropped = log.dropped();
        assert!(dropped >= 99, "{dropped}");
        *open.0.lock().expect("lock") = true;
        open.1.notify_all();
        assert!(log.flush(std::time::Duration::from_secs(10)));
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let noted: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["action"] == "audit.dropped")
            .collect();
        assert_eq!(noted.len(), 1, "one record of the drops");
        assert_eq!(noted[0]["dropped"], dropped);
        assert_eq!(noted[0]["log"], "audit");
        assert_eq!(
            text.lines().count() as u64,
            (QUEUE + 100) as u64 - dropped + 1
        );
    }

    /// The last sender dropped: what it queued is still written.
    /// An event that cannot be serialized.
    struct Unwritable;

    impl Serialize for Unwritable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("unwritable"))
        }
    }

    impl Line for Unwritable {}

    /// An event serialized where it is recorded and failing there is a drop, counted, and
    /// one that must be acknowledged is never acknowledged as written: a required trail
    /// refuses its request. Nothing reaches the sink.
    #[test]
    fn an_event_that_cannot_be_serialized_is_a_counted_drop() {
        let buf = Shared::default();
        let log: JsonLog<Unwritable> =
            JsonLog::start(Sink::Writer(Box::new(buf.clone()))).expect("start");
        assert!(!log.record(Unwritable));
        assert!(log.record_acked(Unwritable).is_none());
        assert_eq!(log.dropped(), 2);
        assert!(log.flush(std::time::Duration::from_secs(2)));
        assert!(buf.0.lock().expect("lock").is_empty());
    }

    /// The admin API's recent lines are the last written, oldest first, across batches, and
    /// no more than asked for.
    #[test]
    fn recent_lines_are_the_last_written_across_batches() {
        let buf = Shared::default();
        let plain = chain::Plain(std::io::BufWriter::new(Box::new(buf.clone())));
        let log: AuditLog = JsonLog::start_lines(Box::new(plain), 3, false).expect("start");
        let ids = |log: &AuditLog| -> Vec<String> {
            log.recent()
                .iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json");
                    v["request_id"].as_str().expect("id").to_string()
                })
                .collect()
        };
        for i in 0..10 {
            log.record(event(i));
        }
        assert!(log.flush(std::time::Duration::from_secs(5)));
        assert_eq!(ids(&log), ["r7", "r8", "r9"]);
        log.record(event(10));
        assert!(log.flush(std::time::Duration::from_secs(5)));
        assert_eq!(ids(&log), ["r8", "r9", "r10"]);
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 11);
        assert_eq!(log.depth(), 0);
    }

    /// A sink whose writes fail.
    struct Broken;

    impl LineSink for Broken {
        fn line(&mut self, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sender waiting on its event hears `true` only once the line is in the sink, and
    /// `false` when the sink failed it.
    #[test]
    fn an_acknowledged_event_is_told_whether_it_was_written() {
        let buf = Shared::default();
        let plain = chain::Plain(std::io::BufWriter::new(Box::new(buf.clone())));
        let log: AuditLog = JsonLog::start_lines(Box::new(plain), 0, false).expect("start");
        log.record(event(1));
        let written = log.record_acked(event(2)).expect("queued");
        assert_eq!(written.blocking_recv(), Ok(true));
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert!(text.ends_with("\n") && text.lines().count() == 2, "{text}");
        assert!(text.lines().nth(1).expect("line").contains("\"r2\""));

        let log: AuditLog = JsonLog::start_lines(Box::new(Broken), 0, false).expect("start");
        let written = log.record_acked(event(1)).expect("queued");
        assert_eq!(written.blocking_recv(), Ok(false));
        assert!(!log.writable());
    }

    #[test]
    fn dropping_the_last_sender_writes_what_was_queued() {
        let buf = Shared::default();
        let log: AuditLog = JsonLog::start(Sink::Writer(Box::new(buf.clone()))).expect("start");
        for i in 0..100 {
            log.record(event(i));
        }
        drop(log);
        let start = std::time::Instant::now();
        while buf
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            < 100
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "not written"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn flush_waits_until_every_queued_event_is_written() {
        let buf = Shared::default();
        let log: AuditLog = JsonLog::start(Sink::Writer(Box::new(buf.clone()))).expect("start");
        for i in 0..500 {
            log.record(event(i));
        }
        assert!(log.flush(std::time::Duration::from_secs(5)));
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 500);
        let last: serde_json::Value =
            serde_json::from_str(text.lines().last().expect("line")).expect("json");
        assert_eq!(last["request_id"], "r499");
        assert_eq!(last["log"], "audit");
        assert!(last.get("shadow").is_none() && last.get("errors").is_none());
    }

    #[test]
    fn request_ids_hold_short_ascii_only() {
        let id = RequestId::new("0123456789abcdef0123456789abcdef").expect("32 bytes");
        assert_eq!(id.as_str(), "0123456789abcdef0123456789abcdef");
        assert_eq!(id.to_string(), id.as_str());
        assert_eq!(
            serde_json::to_string(&id).expect("json"),
            format!("\"{id}\"")
        );
        assert_eq!(RequestId::new("").expect("empty"), RequestId::default());
        assert_eq!(RequestId::default().as_str(), "");
        assert!(RequestId::new(&"a".repeat(33)).is_none(), "too long");
        assert!(RequestId::new("é").is_none(), "not ASCII");
    }

    #[test]
    fn writes_one_json_line_per_event() {
        let buf = Shared::default();
        let log = AccessLog::start(Sink::Writer(Box::new(buf.clone()))).expect("start");
        let event = AccessEvent {
            host: Some("api.example.com".into()),
            time: SystemTime::UNIX_EPOCH,
            request_id: RequestId::new("r1").expect("id"),
            trace_id: None,
            listener: "main".into(),
            route: None,
            client: "127.0.0.1:1".into(),
            forwarded_for: None,
            principal: None,
            method: "GET".into(),
            path: "/x".into(),
            protocol: "HTTP/1.1",
            status: 404,
            grpc_status: None,
            bytes_sent: 0,
            bytes_received: None,
            upstream: None,
            duration_us: 500,
            phase: Some(Phase::Route),
            reason: Some("no route".into()),
        };
        log.record(event.clone());
        log.record(event);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
            if text.lines().count() == 2 {
                let v: serde_json::Value =
                    serde_json::from_str(text.lines().next().expect("line")).expect("json");
                assert_eq!(v["time"], "1970-01-01T00:00:00.000000Z");
                assert_eq!(v["phase"], "route");
                assert_eq!(v["status"], 404);
                assert_eq!(v["request_id"], "r1");
                assert!(v.get("grpc_status").is_none());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "log lines not written: {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
