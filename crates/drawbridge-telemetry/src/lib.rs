//! Drawbridge's records: the access log (one JSON line per request) and the audit trail (one
//! JSON line per authorization decision), each written off the request path through a bounded
//! queue that counts what it had to drop.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::SystemTime;

use serde::Serialize;

pub mod chain;
pub mod metrics;

pub use chain::LineSink;

/// The phase of the pipeline that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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

/// One access-log line. Holds no header values: nothing that could carry a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AccessEvent {
    /// When the request arrived, RFC 3339 in UTC.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The id Drawbridge gave the request (sent upstream as `X-Request-Id`).
    pub request_id: String,
    /// The request's trace, when `[tracing]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Listener name.
    pub listener: Arc<str>,
    /// The host the client asked for (`Host` or `:authority`, without port), as far as the
    /// request was read; `null` when it was refused before its headers were.
    pub host: Option<String>,
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
    pub method: std::borrow::Cow<'static, str>,
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
/// what was decided and by which policies; never a credential.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// When the request arrived, RFC 3339 in UTC.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Always `audit`, to tell these lines from access-log lines in a shared stream.
    pub log: &'static str,
    /// The request id (also in the access log and sent upstream as `X-Request-Id`).
    pub request_id: String,
    /// The request's trace, when `[tracing]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The configuration version (a hash of the config and its policy files).
    pub version: Arc<str>,
    /// Who asked.
    pub principal: AuditPrincipal,
    /// The Cedar action (`GET`, `connect`, `grpc`...).
    pub action: &'static str,
    /// The route (the Cedar resource).
    pub resource: Arc<str>,
    /// The upstream the route leads to.
    pub upstream: Arc<str>,
    /// Normalised path (no query).
    pub path: String,
    /// Client address.
    pub client: Arc<str>,
    /// `allow` or `deny`; `close` when an admitted tunnel was ended (its credential expired
    /// or was revoked, or it reached its maximum lifetime).
    pub decision: &'static str,
    /// Why a tunnel was closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policies that decided (permits when allowed, forbids when forbidden).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate, or why no evaluation was possible.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The shadow policies' verdict, when a shadow set is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<AuditShadow>,
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
pub struct AuditPrincipal {
    /// Its id.
    pub id: String,
    /// `user`, `service` or `api_key`.
    pub kind: &'static str,
    /// The authenticator that admitted it.
    pub authenticator: Arc<str>,
    /// Its groups.
    pub groups: Vec<String>,
}

/// The shadow policies' verdict.
#[derive(Debug, Clone, Serialize)]
pub struct AuditShadow {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The shadow policies that decided.
    pub policies: Vec<String>,
    /// Shadow policies that failed to evaluate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Whether it differs from the enforced decision.
    pub disagrees: bool,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_micros(*t).to_string())
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

/// A JSON-lines log's sending side: cheap to clone, never blocks. Events are serialized
/// where they are recorded, and the writer gets their lines: the event's own data is freed
/// on the thread that built it, and the queue holds a line, not the event.
pub struct JsonLog<T> {
    tx: Option<Sender<(Vec<u8>, Option<Ack>)>>,
    state: Arc<State>,
    events: std::marker::PhantomData<fn(T)>,
}

/// Told whether an event was written (and flushed to the sink).
type Ack = tokio::sync::oneshot::Sender<bool>;

/// What the senders and the writer share.
#[derive(Default)]
struct State {
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

impl<T> Clone for JsonLog<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
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

impl<T> Drop for JsonLog<T> {
    fn drop(&mut self) {
        // The last sender (the writer holds the other reference): let the writer finish.
        if self.tx.is_some() && Arc::strong_count(&self.state) == 2 {
            self.state.wake.closing.store(true, Ordering::SeqCst);
            self.state.wake.wake_now();
        }
    }
}

/// The access log: one line per request.
pub type AccessLog = JsonLog<AccessEvent>;

/// The audit trail: one line per authorization decision.
pub type AuditLog = JsonLog<AuditEvent>;

/// Queue length between the request path and the writer thread: events queued and not yet
/// written, counted in [`State::queued`]. The queue itself is a list of small blocks, not
/// a ring of this many slots made up front: the request path writes each event into memory
/// the writer freed a moment ago, still in cache, rather than into a slot last used
/// sixteen thousand events before.
pub const QUEUE: usize = 16 * 1024;

/// Room made for a line up front: most access and audit lines fit.
const LINE: usize = 512;

impl<T: Serialize + Send + 'static> JsonLog<T> {
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
            writable: true.into(),
            note_drops,
            ..State::default()
        });
        let (tx, rx) = channel();
        let handle = std::thread::Builder::new()
            .name(format!(
                "{}-log",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("json")
            ))
            .spawn({
                let state = state.clone();
                move || write_loop(&rx, sink, &state)
            })?;
        let _ = state.wake.thread.set(handle.thread().clone());
        Ok(Self {
            tx: Some(tx),
            state,
            events: std::marker::PhantomData,
        })
    }

    /// A log that writes nothing.
    pub fn off() -> Self {
        Self {
            tx: None,
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

    /// Queues an event's line unless the queue is full, the writer gone or the event cannot
    /// be serialized (a drop, counted). Its place is counted before it is sent, so the
    /// writer never counts it out first.
    fn enqueue(&self, event: &T, ack: Option<Ack>) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        let mut line = Vec::with_capacity(LINE);
        if serde_json::to_writer(&mut line, event).is_err() {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let before = self.state.queued.fetch_add(1, Ordering::Relaxed);
        if before >= QUEUE as u64 || tx.send((line, ack)).is_err() {
            self.state.queued.fetch_sub(1, Ordering::Relaxed);
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues one event and wakes the writer at once; the answer says whether it was
    /// written and flushed to the sink. `None` when it could not even be queued.
    pub fn record_acked(&self, event: T) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        self.tx.as_ref()?;
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
        self.tx.is_some()
    }

    /// Whether the sink takes what is written: false from a failed write until a write
    /// succeeds again.
    pub fn writable(&self) -> bool {
        self.tx.is_some() && self.state.writable.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until every event queued before the call is written and
    /// flushed: at shutdown, so the last decisions are not lost with the process.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        if self.tx.is_none() {
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

    fn keep(&self, line: &[u8]) {
        if self.keep == 0 {
            return;
        }
        let mut lines = self.lines();
        let mut kept = if lines.len() == self.keep {
            lines.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        kept.clear();
        kept.extend_from_slice(line);
        lines.push_back(kept);
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
    /// Writes a line serialized by the sender.
    fn line(&mut self, line: &[u8]) {
        self.state.recent.keep(line);
        if let Err(e) = self.sink.line(line) {
            self.fail(&e);
        }
    }

    /// Writes an event of the writer's own (a note of drops: rare).
    fn event<T: Serialize>(&mut self, event: &T) {
        match serde_json::to_vec(event) {
            Ok(line) => self.line(&line),
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

fn write_loop(rx: &Receiver<(Vec<u8>, Option<Ack>)>, sink: Box<dyn LineSink>, state: &State) {
    use std::sync::mpsc::TryRecvError;
    let mut w = Writer {
        sink,
        state,
        noted: 0,
        failed: false,
        acks: Vec::new(),
    };
    let wake = &state.wake;
    let flushes = &state.flushes;
    let mut pending: Option<(Vec<u8>, Option<Ack>)> = None;
    loop {
        // Read before draining: everything queued before this ask is drained below.
        let asked = flushes.0.load(Ordering::SeqCst);
        let mut written = 0u64;
        let closed = loop {
            let next = match pending.take() {
                Some(event) => Ok(event),
                None => rx.try_recv(),
            };
            match next {
                Ok((line, ack)) => {
                    w.line(&line);
                    drop(line);
                    w.acks.extend(ack);
                    written += 1;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if written > 0 {
            state.queued.fetch_sub(written, Ordering::Relaxed);
        }
        w.note_drops();
        let closing = closed || wake.closing.load(Ordering::SeqCst);
        if closing {
            // No sender is left: what was queued is written (drained above), then sealed.
            while let Ok((line, ack)) = rx.try_recv() {
                w.line(&line);
                w.acks.extend(ack);
            }
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
        match rx.try_recv() {
            Ok(event) => {
                wake.parked.store(false, Ordering::Relaxed);
                pending = Some(event);
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
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

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            time: SystemTime::UNIX_EPOCH,
            log: "audit",
            request_id: format!("r{i}"),
            trace_id: None,
            version: "v".into(),
            principal: AuditPrincipal {
                id: "alice".into(),
                kind: "user",
                authenticator: "corp".into(),
                groups: vec!["staff".into()],
            },
            action: "GET",
            resource: "orders".into(),
            upstream: "shop".into(),
            path: "/orders".into(),
            client: "127.0.0.1:1".into(),
            decision: "deny",
            reason: None,
            policies: Vec::new(),
            errors: Vec::new(),
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
    fn writes_one_json_line_per_event() {
        let buf = Shared::default();
        let log = AccessLog::start(Sink::Writer(Box::new(buf.clone()))).expect("start");
        let event = AccessEvent {
            host: Some("api.example.com".into()),
            time: SystemTime::UNIX_EPOCH,
            request_id: "r1".into(),
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
