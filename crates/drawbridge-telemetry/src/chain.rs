//! The audit trail's hash chain. Every line is `{"seq":N,"prev":"<hex>",...event}`: its
//! sequence number and the SHA-256 of the line before it (the bytes as written, without the
//! newline), so that a line removed, moved or edited breaks the chain where it happened.
//! The chain's head is sealed, at rotation and at shutdown, by a line
//! `{"seq":N,"prev":"<hex>","log":"audit_head",...,"signature":"<JWS>"}` whose signature
//! (the instance's key) covers the sequence number and hash it follows: a trail cut short
//! after its last seal is told from a complete one.
//!
//! Files rotate by size or age: the current file is sealed, renamed with the sequence
//! number of its seal, and the chain goes on in a new file. A restart resumes the chain from
//! the file's last line. One process writes the file at a time: the writer holds an
//! exclusive lock on it, so a successor started by a hot upgrade waits (its events queued)
//! until its predecessor has sealed its part and exited, then continues the same chain.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::digest::{SHA256, digest};

/// Signs a seal's claims with the instance's key; `None` when it cannot.
pub type Signer = Box<dyn Fn(&serde_json::Value) -> Option<String> + Send>;

/// Where a log's lines go, one at a time (without their newline), and what it does at a
/// flush and at the end.
pub trait LineSink: Send {
    /// Writes one line.
    fn line(&mut self, json: &[u8]) -> std::io::Result<()>;
    /// Writes a batch of lines. A line that fails does not stop the next; the first
    /// failure is returned.
    fn lines(&mut self, lines: Lines<'_>) -> std::io::Result<()> {
        let mut first = Ok(());
        for line in lines.each(0) {
            if let Err(e) = self.line(line)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
    /// Makes what was written durable enough for the sink (a file's buffer written out).
    fn flush(&mut self) -> std::io::Result<()>;
    /// Seals what was written (the chain's head, signed); nothing for a plain log.
    fn seal(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lines as a log's batch holds them: one buffer, each line ended by a newline (a JSON line
/// holds no raw one), and where each ends, so that nothing scans for them.
#[derive(Clone, Copy)]
pub struct Lines<'a> {
    bytes: &'a [u8],
    /// The offset just past each line's newline.
    ends: &'a [usize],
}

impl<'a> Lines<'a> {
    /// `bytes` cut at `ends`.
    pub(crate) fn new(bytes: &'a [u8], ends: &'a [usize]) -> Self {
        Self { bytes, ends }
    }

    /// Every line with its newline, as a file takes them.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How many lines.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each line from the `skip`th on, without its newline.
    pub fn each(&self, skip: usize) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let bytes = self.bytes;
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .skip(skip)
            .map(move |(start, end)| bytes.get(start..end.saturating_sub(1)).unwrap_or_default())
    }
}

/// A plain log: each line as it comes.
pub struct Plain(pub BufWriter<Box<dyn Write + Send>>);

impl LineSink for Plain {
    fn line(&mut self, json: &[u8]) -> std::io::Result<()> {
        self.0.write_all(json)?;
        self.0.write_all(b"\n")
    }

    /// Already lines as the file takes them, in a buffer of their own: written straight
    /// through, not copied into the writer's buffer first (a busy log's batch is tens of
    /// kilobytes, and each copy passes it through the cache once more). Lines still
    /// buffered from [`LineSink::line`] go first. What the file does not take when a write
    /// fails waits in the buffer for the next flush, as it would have had it been copied
    /// there first: a line is never cut off by a failure that passes.
    fn lines(&mut self, lines: Lines<'_>) -> std::io::Result<()> {
        if !self.0.buffer().is_empty() {
            return self.0.write_all(lines.bytes());
        }
        let mut rest = lines.bytes();
        while !rest.is_empty() {
            let failed = match self.0.get_mut().write(rest) {
                Ok(0) => std::io::ErrorKind::WriteZero.into(),
                Ok(n) => {
                    rest = &rest[n..];
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            let _ = self.0.write_all(rest);
            return Err(failed);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Where the chain stands: the last sequence number and the hash of the last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Sequence number of the last line (0 before the first).
    pub seq: u64,
    /// SHA-256 of the last line (zeros before the first).
    pub hash: [u8; 32],
}

impl Link {
    /// Before the first line.
    pub const GENESIS: Link = Link {
        seq: 0,
        hash: [0; 32],
    };
}

/// The SHA-256 of a line, as the chain records it.
pub fn hash(line: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, line);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// How the chained file rotates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rotation {
    /// Once the file holds this many bytes.
    pub bytes: Option<u64>,
    /// Once the file is this old.
    pub every: Option<Duration>,
}

enum Out {
    File {
        path: PathBuf,
        /// Opened (and locked) on the writer's thread at its first write.
        file: Option<BufWriter<File>>,
        size: u64,
        opened: Instant,
        rotation: Rotation,
    },
    Stream(BufWriter<Box<dyn Write + Send>>),
}

/// Opens the live file at `path` for appending and takes its lock, waiting while another
/// process holds it; a file renamed away meanwhile (rotated by that process) is let go and
/// the new one taken.
fn open_locked(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if !file.metadata()?.is_file() {
            // A device or a pipe: nothing to share a chain through.
            return Ok(file);
        }
        file.lock()?;
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(file),
            // Renamed (or removed) while we waited: take whatever is there now.
            _ => continue,
        }
    }
}

/// A copy of each line of the trail to a syslog receiver: RFC 5424 (`authpriv.info`,
/// app `drawbridge`, msgid `audit`), one datagram per line, sent without waiting; a
/// receiver that is not there loses its copy, never the trail its line.
pub struct Syslog {
    socket: SyslogSocket,
    header_tail: String,
    /// A copy that could not be sent was said (once, until one is sent again).
    warned: bool,
}

enum SyslogSocket {
    Udp(std::net::UdpSocket, std::net::SocketAddr),
    Unix(std::os::unix::net::UnixDatagram, PathBuf),
}

impl Syslog {
    /// A sender to `addr` over UDP.
    pub fn udp(addr: std::net::SocketAddr) -> std::io::Result<Syslog> {
        let bind: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(bind)?;
        s.set_nonblocking(true)?;
        Ok(Self::new(SyslogSocket::Udp(s, addr)))
    }

    /// A sender to the local datagram socket at `path` (`/dev/log`).
    pub fn unix(path: &Path) -> std::io::Result<Syslog> {
        let s = std::os::unix::net::UnixDatagram::unbound()?;
        s.set_nonblocking(true)?;
        Ok(Self::new(SyslogSocket::Unix(s, path.to_path_buf())))
    }

    fn new(socket: SyslogSocket) -> Syslog {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| "-".into());
        Syslog {
            socket,
            header_tail: format!(" {host} drawbridge {} audit - ", std::process::id()),
            warned: false,
        }
    }

    /// `<86>` is facility authpriv (10), severity info (6).
    fn send(&mut self, line: &[u8]) {
        let mut msg = Vec::with_capacity(line.len() + 96);
        msg.extend_from_slice(b"<86>1 ");
        msg.extend_from_slice(
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .as_bytes(),
        );
        msg.extend_from_slice(self.header_tail.as_bytes());
        msg.extend_from_slice(line);
        let sent = match &self.socket {
            SyslogSocket::Udp(s, to) => s.send_to(&msg, to),
            SyslogSocket::Unix(s, to) => s.send_to(&msg, to),
        };
        match sent {
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(error = %e, "the audit trail's syslog copy could not be sent; the trail itself is written");
            }
            Err(_) => {}
            Ok(_) => self.warned = false,
        }
    }
}

/// A hash-chained audit trail.
pub struct Chained {
    out: Out,
    link: Link,
    signer: Signer,
    /// Where each line is copied, besides.
    syslog: Option<Syslog>,
    /// Lines since the last seal: a seal with nothing new to seal is not written.
    unsealed: u64,
    line: Vec<u8>,
}

impl Chained {
    /// The trail in the file at `path`. The file is opened, locked and its chain resumed
    /// from its last line at the first write; what can be checked now (that it can be
    /// opened for appending) is checked now.
    pub fn file(path: &Path, rotation: Rotation, signer: Signer) -> std::io::Result<Chained> {
        drop(OpenOptions::new().create(true).append(true).open(path)?);
        Ok(Chained {
            out: Out::File {
                path: path.to_path_buf(),
                file: None,
                size: 0,
                opened: Instant::now(),
                rotation,
            },
            link: Link::GENESIS,
            signer,
            syslog: None,
            unsealed: 0,
            line: Vec::with_capacity(1024),
        })
    }

    /// Copies each line to `syslog` too.
    pub fn with_syslog(mut self, syslog: Syslog) -> Chained {
        self.syslog = Some(syslog);
        self
    }

    /// The live file, opened and locked, and the chain resumed, on first use.
    fn ensure_open(&mut self) -> std::io::Result<()> {
        if let Out::File {
            path,
            file: file @ None,
            size,
            opened,
            ..
        } = &mut self.out
        {
            let f = open_locked(path)?;
            self.link = resume(path)?;
            *size = f.metadata()?.len();
            *opened = Instant::now();
            *file = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        Ok(())
    }

    /// The trail on a stream (standard output or error): chained, never rotated.
    pub fn stream(w: Box<dyn Write + Send>, signer: Signer) -> Chained {
        Chained {
            out: Out::Stream(BufWriter::with_capacity(64 * 1024, w)),
            link: Link::GENESIS,
            signer,
            syslog: None,
            unsealed: 0,
            line: Vec::with_capacity(1024),
        }
    }

    /// Writes `json` (an object) as the chain's next line.
    fn append(&mut self, json: &[u8]) -> std::io::Result<()> {
        let Some(rest) = json.strip_prefix(b"{") else {
            return Err(std::io::Error::other("an audit event is not a JSON object"));
        };
        let seq = self.link.seq + 1;
        self.line.clear();
        // Written in place: this runs for every audited decision.
        write!(self.line, "{{\"seq\":{seq},\"prev\":\"")?;
        let mut prev = [0u8; 64];
        let prev = base16ct::lower::encode(&self.link.hash, &mut prev)
            .map_err(|_| std::io::Error::other("hex buffer too small"))?;
        self.line.extend_from_slice(prev);
        self.line.push(b'"');
        if rest != b"}" {
            self.line.push(b',');
        }
        self.line.extend_from_slice(rest);
        let w: &mut dyn Write = match &mut self.out {
            Out::File {
                file: Some(file),
                size,
                ..
            } => {
                *size += self.line.len() as u64 + 1;
                file
            }
            Out::File { file: None, .. } => {
                return Err(std::io::Error::other("the audit file is not open"));
            }
            Out::Stream(s) => s,
        };
        w.write_all(&self.line)?;
        w.write_all(b"\n")?;
        self.link = Link {
            seq,
            hash: hash(&self.line),
        };
        if let Some(s) = &mut self.syslog {
            s.send(&self.line);
        }
        Ok(())
    }

    fn due(&self) -> bool {
        match &self.out {
            Out::File {
                size,
                opened,
                rotation,
                ..
            } => {
                rotation.bytes.is_some_and(|b| *size >= b)
                    || rotation.every.is_some_and(|e| opened.elapsed() >= e)
            }
            Out::Stream(_) => false,
        }
    }

    /// Seals the file, renames it after its seal and opens a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.seal_now("rotation")?;
        if let Out::File {
            path,
            file: Some(file),
            size,
            opened,
            ..
        } = &mut self.out
        {
            file.flush()?;
            let rotated = rotated_name(path, self.link.seq);
            // The new file is created and locked before the old one is renamed away, so a
            // successor waiting on the old name finds the new file taken.
            let mut next = path.as_os_str().to_os_string();
            next.push(".next");
            let next = PathBuf::from(next);
            let fresh = OpenOptions::new().create(true).append(true).open(&next)?;
            fresh.lock()?;
            std::fs::rename(&*path, &rotated)?;
            std::fs::rename(&next, &*path)?;
            *file = BufWriter::with_capacity(64 * 1024, fresh);
            *size = 0;
            *opened = Instant::now();
        }
        Ok(())
    }

    fn seal_now(&mut self, why: &str) -> std::io::Result<()> {
        let claims = serde_json::json!({
            "seq": self.link.seq + 1,
            "prev": base16ct::lower::encode_string(&self.link.hash),
            "iat": SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let signature = (self.signer)(&claims);
        let head = serde_json::json!({
            "log": "audit_head",
            "time": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "reason": why,
            "signature": signature,
        });
        let text = serde_json::to_vec(&head).map_err(std::io::Error::other)?;
        self.append(&text)?;
        self.unsealed = 0;
        Ok(())
    }
}

/// The name a rotated file takes: the live file's name, then the sequence number of its
/// seal, zero-padded so that names sort in the chain's order.
pub fn rotated_name(path: &Path, seq: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{seq:020}"));
    path.with_file_name(name)
}

impl LineSink for Chained {
    fn line(&mut self, json: &[u8]) -> std::io::Result<()> {
        self.ensure_open()?;
        if self.due() {
            self.rotate()?;
        }
        self.append(json)?;
        self.unsealed += 1;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Out::File { file: Some(f), .. } => f.flush(),
            Out::File { file: None, .. } => Ok(()),
            Out::Stream(s) => s.flush(),
        }
    }

    /// Seals the chain and lets the file go (and its lock, for a successor); a line
    /// written after this opens it again and goes on from the seal.
    fn seal(&mut self) -> std::io::Result<()> {
        if self.unsealed > 0 {
            self.ensure_open()?;
            self.seal_now("shutdown")?;
        }
        self.flush()?;
        if let Out::File { file, .. } = &mut self.out {
            *file = None;
        }
        Ok(())
    }
}

/// Where the chain in `path` stands: its last complete line's sequence number and hash;
/// the start of a chain for a missing or empty file, or one whose last line carries none.
fn resume(path: &Path) -> std::io::Result<Link> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Link::GENESIS),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        // A device or a pipe (`/dev/null`...): nothing to resume from, nothing to read.
        return Ok(Link::GENESIS);
    }
    // A line is far shorter than this; read the tail only.
    const TAIL: u64 = 256 * 1024;
    f.seek(SeekFrom::Start(meta.len().saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    f.take(TAIL).read_to_end(&mut tail)?;
    let last = tail
        .split(|&b| b == b'\n')
        .rev()
        .find(|l| !l.is_empty() && l.ends_with(b"}"));
    let Some(last) = last else {
        return Ok(Link::GENESIS);
    };
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
    Ok(match seq {
        Some(seq) => Link {
            seq,
            hash: hash(last),
        },
        None => Link::GENESIS,
    })
}

/// Where a trail breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {what}")]
pub struct Break {
    /// The file.
    pub file: String,
    /// The line (1-based); 0 for the end of the trail.
    pub line: usize,
    /// What is wrong there.
    pub what: String,
}

/// What a whole trail holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Its first sequence number.
    pub first: u64,
    /// Its last.
    pub last: u64,
    /// Events (lines that are not seals).
    pub events: u64,
    /// Seals, and how many of them had their signature checked.
    pub seals: u64,
    /// Seals whose signature was checked.
    pub signatures_checked: u64,
    /// Events recorded as dropped (the queue was full).
    pub dropped: u64,
}

/// Checks a seal's signature: the claims it signed, or why it does not verify.
pub type CheckSignature<'a> = dyn Fn(&str) -> Result<serde_json::Value, String> + 'a;

/// Checks a trail: `files` in the chain's order (rotated files, then the live one). Each
/// seal's signature is handed to `check` (which returns the claims it signed, or why not);
/// `live` accepts a trail that does not end in a seal (a file still being written).
pub fn verify(
    files: &[(String, Vec<u8>)],
    check: Option<&CheckSignature<'_>>,
    live: bool,
) -> Result<Summary, Break> {
    // Every sequence number present, to tell events moved from events removed.
    let present: std::collections::HashSet<u64> = files
        .iter()
        .flat_map(|(_, b)| b.split(|&c| c == b'\n'))
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .collect();
    let mut prev: Option<Link> = None;
    let mut sum = Summary::default();
    let mut last_was_seal = false;
    let mut at = (String::new(), 0usize);
    for (name, bytes) in files {
        let mut lines = bytes.split(|&b| b == b'\n').enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let broken = |what: String| Break {
                file: name.clone(),
                line: i + 1,
                what,
            };
            if line.is_empty() {
                if lines.peek().is_none() {
                    break;
                }
                return Err(broken("an empty line".into()));
            }
            if lines.peek().is_none() {
                return Err(broken(
                    "the last line does not end: the file was cut short (or is being written)"
                        .into(),
                ));
            }
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                broken(format!(
                    "not a JSON event ({e}): the line was altered or cut"
                ))
            })?;
            let seq = v
                .get("seq")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| broken("no `seq`: not a line of the chain".into()))?;
            let recorded = v
                .get("prev")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| broken("no `prev`: not a line of the chain".into()))?;
            match prev {
                None => {
                    sum.first = seq;
                    if seq == 1 && recorded != base16ct::lower::encode_string(&Link::GENESIS.hash) {
                        return Err(broken("the first event records a predecessor".into()));
                    }
                }
                Some(p) => {
                    if seq <= p.seq {
                        return Err(broken(format!(
                            "event #{seq} comes after #{}: events were reordered or repeated",
                            p.seq
                        )));
                    }
                    if seq > p.seq + 1 && present.contains(&(p.seq + 1)) {
                        return Err(broken(format!(
                            "event #{seq} comes before #{}: events were reordered",
                            p.seq + 1
                        )));
                    }
                    if seq > p.seq + 1 {
                        let missing = seq - p.seq - 1;
                        return Err(broken(format!(
                            "event #{seq} follows #{}: {missing} event{} removed (#{} first)",
                            p.seq,
                            if missing == 1 { " was" } else { "s were" },
                            p.seq + 1
                        )));
                    }
                    if recorded != base16ct::lower::encode_string(&p.hash) {
                        return Err(broken(format!(
                            "event #{seq} does not follow #{} as recorded: #{} (at {}:{}) was edited",
                            p.seq, p.seq, at.0, at.1
                        )));
                    }
                }
            }
            last_was_seal = v.get("log").and_then(serde_json::Value::as_str) == Some("audit_head");
            if last_was_seal {
                sum.seals += 1;
                if let Some(check) = check {
                    let sig = v
                        .get("signature")
                        .and_then(serde_json::Value::as_str)
                        .ok_or_else(|| broken(format!("seal #{seq} is not signed")))?;
                    let claims = check(sig).map_err(|e| {
                        broken(format!("seal #{seq}: the signature does not verify ({e})"))
                    })?;
                    if claims.get("seq").and_then(serde_json::Value::as_u64) != Some(seq)
                        || claims.get("prev").and_then(serde_json::Value::as_str) != Some(recorded)
                    {
                        return Err(broken(format!(
                            "seal #{seq}: its signature is for another place in the chain"
                        )));
                    }
                    sum.signatures_checked += 1;
                }
            } else {
                sum.events += 1;
                if v.get("action").and_then(serde_json::Value::as_str) == Some("audit.dropped") {
                    sum.dropped += v
                        .get("dropped")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                }
            }
            prev = Some(Link {
                seq,
                hash: hash(line),
            });
            sum.last = seq;
            at = (name.clone(), i + 1);
        }
    }
    if prev.is_none() {
        return Err(Break {
            file: files.last().map(|f| f.0.clone()).unwrap_or_default(),
            line: 0,
            what: "no event at all".into(),
        });
    }
    if !last_was_seal && !live {
        return Err(Break {
            file: at.0,
            line: at.1,
            what: format!(
                "the trail ends at #{} without a seal: events after it may have been removed (a trail still being written: --live)",
                sum.last
            ),
        });
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a writer was asked to write, call by call.
    #[derive(Clone, Default)]
    struct Calls(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("calls").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A file that takes `take` bytes, then fails once, then takes everything.
    struct Faltering {
        calls: Calls,
        take: usize,
        failed: bool,
    }

    impl Write for Faltering {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.take == 0 && !self.failed {
                self.failed = true;
                return Err(std::io::Error::other("no space left"));
            }
            let n = if self.failed {
                buf.len()
            } else {
                buf.len().min(self.take)
            };
            self.take -= n.min(self.take);
            self.calls.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A batch the file stops taking part way waits for the next flush from where the file
    /// stopped: nothing is lost and no line is cut in two.
    #[test]
    fn plain_keeps_what_a_failed_write_left_for_the_next_flush() {
        let calls = Calls::default();
        let file = Faltering {
            calls: calls.clone(),
            take: 5,
            failed: false,
        };
        let mut plain = Plain(BufWriter::new(Box::new(file)));
        let batch = b"{\"n\":1}\n{\"n\":2}\n".to_vec();
        let ends = [8, 16];
        assert!(plain.lines(Lines::new(&batch, &ends)).is_err());
        plain.flush().expect("flush after the failure passed");
        plain.line(b"{\"n\":3}").expect("line");
        plain.flush().expect("flush");
        let written: Vec<u8> = calls.0.lock().expect("calls").concat();
        assert_eq!(
            String::from_utf8_lossy(&written),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"
        );
    }

    /// A batch goes to the file as it is, in one write; a line still buffered goes before it,
    /// and nothing is lost or reordered.
    #[test]
    fn plain_writes_a_batch_straight_through_after_what_it_buffered() {
        let calls = Calls::default();
        let mut plain = Plain(BufWriter::new(Box::new(calls.clone())));
        let batch = b"{\"n\":1}\n{\"n\":2}\n".to_vec();
        let ends = [8, 16];
        plain.lines(Lines::new(&batch, &ends)).expect("lines");
        assert_eq!(*calls.0.lock().expect("calls"), vec![batch.clone()]);

        plain.line(b"{\"n\":0}").expect("line");
        plain.lines(Lines::new(&batch, &ends)).expect("lines");
        plain.flush().expect("flush");
        let written: Vec<u8> = calls.0.lock().expect("calls").concat();
        assert_eq!(
            String::from_utf8_lossy(&written),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
        );
    }

    fn signer() -> Signer {
        // A stand-in signature that names what it signs; the real one is a JWS.
        Box::new(|claims| Some(format!("{}.{}", claims["seq"], claims["prev"].as_str()?)))
    }

    fn check(sig: &str) -> Result<serde_json::Value, String> {
        let (seq, prev) = sig.split_once('.').ok_or("malformed")?;
        let seq: u64 = seq.parse().map_err(|_| "seq")?;
        Ok(serde_json::json!({"seq": seq, "prev": prev}))
    }

    fn write(dir: &Path, rotation: Rotation, events: usize) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let mut c = Chained::file(&path, rotation, signer()).expect("open");
        for i in 0..events {
            c.line(format!("{{\"log\":\"audit\",\"request_id\":\"r{i}\"}}").as_bytes())
                .expect("line");
        }
        c.seal().expect("seal");
        path
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        // Rotated files first, in their order, then the live file.
        names.sort_by_key(|p| (p.extension().is_some_and(|e| e == "jsonl"), p.clone()));
        names
            .into_iter()
            .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
            .collect()
    }

    fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn a_sealed_trail_verifies_and_every_tampering_is_found_where_it_happened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), Rotation::default(), 5);
        let good = std::fs::read(&path).expect("read");
        let one = |bytes: Vec<u8>| vec![("audit.jsonl".to_string(), bytes)];
        let sum = verify(&one(good.clone()), Some(&check), false).expect("intact");
        assert_eq!((sum.first, sum.last, sum.events, sum.seals), (1, 6, 5, 1));
        assert_eq!(sum.signatures_checked, 1);
        let l = lines(&good);

        // A deleted event.
        let mut cut = l.clone();
        cut.remove(2);
        let e = verify(&one(join(&cut)), Some(&check), false).expect_err("deleted");
        assert_eq!(e.line, 3);
        assert!(e.what.contains("1 event was removed (#3 first)"), "{e}");

        // An edited field (the request id of #2).
        let mut edited = l.clone();
        edited[1] = String::from_utf8(edited[1].clone())
            .expect("utf8")
            .replace("r1", "r9")
            .into_bytes();
        let e = verify(&one(join(&edited)), Some(&check), false).expect_err("edited");
        assert!(e.what.contains("#2 (at audit.jsonl:2) was edited"), "{e}");

        // Two events swapped.
        let mut swapped = l.clone();
        swapped.swap(1, 2);
        let e = verify(&one(join(&swapped)), Some(&check), false).expect_err("swapped");
        assert!(e.what.contains("reordered"), "{e}");

        // Truncated mid-line, and at a line boundary (the seal is gone).
        let e = verify(&one(good[..good.len() - 10].to_vec()), Some(&check), false)
            .expect_err("cut mid-line");
        assert!(e.what.contains("cut short"), "{e}");
        let e = verify(&one(join(&l[..4])), Some(&check), false).expect_err("cut");
        assert!(e.what.contains("ends at #4 without a seal"), "{e}");
        // ... which a live file may do.
        verify(&one(join(&l[..4])), Some(&check), true).expect("live");

        // The last event edited: its seal no longer follows it.
        let mut last = l.clone();
        last[4] = String::from_utf8(last[4].clone())
            .expect("utf8")
            .replace("r4", "r5")
            .into_bytes();
        let e = verify(&one(join(&last)), Some(&check), false).expect_err("last edited");
        assert!(e.what.contains("#5 (at audit.jsonl:5) was edited"), "{e}");

        // A seal whose signature is for another place, or forged.
        let bad = |sig: &str| -> Result<serde_json::Value, String> {
            check(sig).map(|mut v| {
                v["seq"] = 99.into();
                v
            })
        };
        let e = verify(&one(good.clone()), Some(&bad), false).expect_err("misplaced");
        assert!(e.what.contains("another place"), "{e}");
        let forged = |_: &str| -> Result<serde_json::Value, String> { Err("bad".into()) };
        let e = verify(&one(good), Some(&forged), false).expect_err("forged");
        assert!(e.what.contains("does not verify"), "{e}");
    }

    /// A hot upgrade: the successor's writer waits for the predecessor's lock, then
    /// continues the chain after the predecessor's seal.
    #[test]
    fn a_successor_waits_for_its_predecessor_and_continues_its_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut first = Chained::file(&path, Rotation::default(), signer()).expect("open");
        first.line(b"{\"n\":1}").expect("line");
        first.flush().expect("flush");
        let second = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut c = Chained::file(&path, Rotation::default(), signer()).expect("open");
                c.line(b"{\"n\":3}").expect("line");
                c.seal().expect("seal");
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        // The successor has not written while the predecessor holds the file.
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 1, "{text}");
        first.line(b"{\"n\":2}").expect("line");
        first.seal().expect("seal");
        drop(first);
        second.join().expect("successor");
        let all = vec![(
            "audit.jsonl".to_string(),
            std::fs::read(&path).expect("read"),
        )];
        let sum = verify(&all, Some(&check), false).expect("one chain");
        assert_eq!((sum.events, sum.seals), (3, 2));
    }

    #[test]
    fn rotation_and_restarts_keep_one_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rotation = Rotation {
            bytes: Some(300),
            every: None,
        };
        write(dir.path(), rotation, 10);
        // A restart resumes the chain from the file's last line.
        write(dir.path(), rotation, 3);
        let all = files(dir.path());
        assert!(
            all.len() > 3,
            "rotated: {:?}",
            all.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        let sum = verify(&all, Some(&check), false).expect("one chain across files");
        assert_eq!(sum.events, 13);
        assert_eq!(sum.first, 1);
        assert!(sum.seals as usize >= all.len());
        // A rotated file left out is a gap.
        let mut missing = all.clone();
        missing.remove(1);
        let e = verify(&missing, Some(&check), false).expect_err("gap");
        assert!(e.what.contains("removed"), "{e}");
        // Files given out of order.
        let mut shuffled = all;
        shuffled.swap(0, 1);
        assert!(verify(&shuffled, Some(&check), false).is_err());
    }
}
