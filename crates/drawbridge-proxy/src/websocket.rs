//! A WebSocket tunnel's relay. Frames pass verbatim, extensions and all, but Drawbridge
//! knows where each one ends (the frame header is read with tungstenite's parser), so it can
//! end a tunnel the way the protocol expects: a close frame to each side, at a frame
//! boundary, `1001 going away` when the server drains and `1008 policy violation` when the
//! credential that admitted the tunnel expires or a reload revokes it.
//!
//! A tunnel keeps what its request held: its connection's slot (`max_connections`), its
//! endpoint's in-flight count (`max_requests`) and its place in the drain; its access-log
//! line is written when it ends, with the bytes of both directions.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::body::Record;
use crate::context::ConnInfo;
use crate::tunnel::Lease;
use crate::upstream::InFlight;

/// How long a tunnel being ended may take to reach a frame boundary in each direction
/// before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long each side has, once its close frame went, to answer with its own before its
/// socket closes anyway.
const CLOSE_REPLY: Duration = Duration::from_secs(1);

/// What the request leaves with its tunnel: its access-log record (written when the tunnel
/// ends) and its connection (holding its slot and its place in the drain).
pub struct Kept {
    /// The request's record.
    pub record: Record,
    /// The client's connection.
    pub conn: Arc<ConnInfo>,
}

/// Why Drawbridge ends a tunnel: the close frame it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    code: u16,
    reason: &'static str,
}

/// Starts relaying between the client and the upstream once both upgrades complete; the
/// returned sender takes the request's record and connection.
pub fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    lease: Option<Lease>,
) -> oneshot::Sender<Kept> {
    let (tx, rx) = oneshot::channel::<Kept>();
    tokio::spawn(async move {
        let kept = rx.await.ok();
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                finish(kept, (0, 0), Some("upgrade did not complete"));
                return;
            }
        };
        let stop = kept.as_ref().and_then(|k| k.conn.stop.clone());
        let (bytes, why) = run(TokioIo::new(client), TokioIo::new(upstream), lease, stop).await;
        drop(in_flight);
        finish(kept, bytes, why);
    });
    tx
}

/// Writes the tunnel's access-log line: bytes both ways, the whole tunnel's duration.
fn finish(kept: Option<Kept>, (up, down): (u64, u64), why: Option<&str>) {
    let Some(Kept { record, conn }) = kept else {
        return;
    };
    record.write(std::time::Instant::now(), |event| {
        event.bytes_sent = down;
        event.bytes_received = Some(up);
        if let Some(why) = why {
            event.reason = Some(why.to_string());
        }
    });
    drop(conn);
}

/// Relays until both sides are done, or ends the tunnel when its lease or the drain says;
/// the bytes from the client and to it, and why Drawbridge ended it.
async fn run<C, U>(
    client: C,
    upstream: U,
    lease: Option<Lease>,
    stop: Option<watch::Receiver<bool>>,
) -> ((u64, u64), Option<&'static str>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let (end, ending) = watch::channel(None::<Ending>);
    // Toward the upstream Drawbridge is the client: its own frames are masked.
    let up = pump(client_r, upstream_w, true, ending.clone());
    let down = pump(upstream_r, client_w, false, ending);
    let mut both = std::pin::pin!(async { tokio::join!(up, down) });
    let (mut lease, deadline, recheck) = match lease {
        Some(mut l) => {
            let recheck = l.recheck.take();
            let deadline = l.deadline;
            (Some(l), Some(deadline), recheck)
        }
        None => (None, None, None),
    };
    let expired = async {
        match deadline {
            Some(d) => {
                tokio::time::sleep_until(d.at).await;
                d
            }
            None => std::future::pending().await,
        }
    };
    let revoked = async {
        match recheck {
            Some(r) => r.revoked().await,
            None => std::future::pending().await,
        }
    };
    let draining = async {
        match stop {
            Some(mut s) => {
                while !*s.borrow_and_update() {
                    if s.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
            None => std::future::pending().await,
        }
    };
    let (why, ending) = tokio::select! {
        bytes = &mut both => return (bytes, None),
        d = expired => (d.why, if d.credential {
            Ending { code: 1008, reason: "credential expired" }
        } else {
            Ending { code: 1001, reason: "maximum lifetime reached" }
        }),
        why = revoked => (why, Ending { code: 1008, reason: "access revoked" }),
        () = draining => ("server shutting down", Ending { code: 1001, reason: "server shutting down" }),
    };
    if let Some(l) = lease.take() {
        l.closed(why);
    }
    let _ = end.send(Some(ending));
    // Each direction sends its close frame at its next frame boundary; one that does not
    // reach a boundary in time is cut.
    match tokio::time::timeout(CLOSE_GRACE + CLOSE_REPLY, &mut both).await {
        Ok(bytes) => (bytes, Some(why)),
        Err(_) => ((0, 0), Some(why)),
    }
}

/// Copies frames from `from` to `to` verbatim until `from` ends (then shuts `to` down) or
/// an ending is asked for at a frame boundary (then sends the close frame, and waits for
/// `from`'s own close frame before it stops). Returns the bytes copied.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    masked: bool,
    mut ending: watch::Receiver<Option<Ending>>,
) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Payload bytes of the current frame still to come; 0 between frames.
    let mut remaining: u64 = 0;
    let mut copied: u64 = 0;
    loop {
        let asked = *ending.borrow();
        let (ready, broken) = sendable(&buf, &mut remaining, asked.is_some());
        if ready > 0 {
            if to.write_all(&buf[..ready]).await.is_err() {
                return copied;
            }
            copied += ready as u64;
            buf.advance(ready);
        }
        if let Some(e) = broken {
            // Not WebSocket framing: the frames before it went; nothing more does.
            tracing::debug!(error = %e, "websocket frame unreadable; relay ended");
            let _ = to.shutdown().await;
            return copied;
        }
        // Between frames (a partial header not yet sent): an ending can be said here.
        let boundary = remaining == 0;
        let asked = asked.or(*ending.borrow());
        if boundary && let Some(e) = asked {
            let _ = to.write_all(&close_frame(e, masked)).await;
            let _ = to.shutdown().await;
            // The side this pump reads answers the close frame sent to it (by the other
            // pump) with its own: read up to it, so that the socket does not close with
            // bytes unread (a reset, which can take the close frame with it).
            let _ = tokio::time::timeout(CLOSE_REPLY, until_close(&mut from, &mut buf)).await;
            return copied;
        }
        tokio::select! {
            read = from.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    // This side ended between frames just as an ending was asked (an
                    // upstream that answers the other pump's close frame by closing its
                    // socket, say): the close frame still goes, before the end.
                    let asked = *ending.borrow();
                    if boundary && let Some(e) = asked {
                        let _ = to.write_all(&close_frame(e, masked)).await;
                    }
                    let _ = to.shutdown().await;
                    return copied;
                }
                Ok(_) => {}
            },
            _ = ending.changed(), if boundary => {}
        }
    }
}

/// Reads and drops frames from `from` (`buf` holds what was read past the last boundary)
/// until a close frame has arrived whole, `from` ends, or its bytes are not WebSocket framing.
async fn until_close<R: AsyncRead + Unpin>(from: &mut R, buf: &mut BytesMut) {
    // Payload bytes still to drop of the frame being read, and whether it is the close.
    let mut remaining: u64 = 0;
    let mut closing = false;
    loop {
        loop {
            let drop = (remaining.min(buf.len() as u64)) as usize;
            buf.advance(drop);
            remaining -= drop as u64;
            if remaining > 0 {
                break;
            }
            if closing {
                return;
            }
            let mut cursor = Cursor::new(&buf[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    buf.advance(cursor.position() as usize);
                    remaining = len;
                    closing = header.opcode == OpCode::Control(Control::Close);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        match from.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// How many bytes at the start of `buf` can be relayed now: the payload of the frame in
/// flight that is here (`remaining` bytes of it were still to come; updated), then whole
/// frame headers and the payload after each, as far as `buf` goes. With `ending`, nothing
/// past the frame in flight: the relay stops at the next boundary. A frame header cut at
/// the end of `buf` waits for the rest. A header that is not WebSocket framing ends the
/// walk: the bytes before it can still go, with the error after them. Public for the fuzz
/// target.
pub fn sendable(
    buf: &[u8],
    remaining: &mut u64,
    ending: bool,
) -> (usize, Option<tungstenite::Error>) {
    let mut ready = 0usize;
    loop {
        if *remaining > 0 {
            let take = (*remaining).min((buf.len() - ready) as u64);
            ready += take as usize;
            *remaining -= take;
            if *remaining > 0 {
                return (ready, None);
            }
        }
        if ready == buf.len() || ending {
            return (ready, None);
        }
        let mut cursor = Cursor::new(&buf[ready..]);
        match FrameHeader::parse(&mut cursor) {
            Ok(Some((_, len))) => {
                ready += cursor.position() as usize;
                *remaining = len;
            }
            Ok(None) => return (ready, None),
            Err(e) => return (ready, Some(e)),
        }
    }
}

/// A close frame with `e`'s code and reason; masked when sent to the upstream.
fn close_frame(e: Ending, masked: bool) -> Vec<u8> {
    let mut frame = Frame::close(Some(CloseFrame {
        code: CloseCode::from(e.code),
        reason: e.reason.into(),
    }));
    if masked {
        let mut mask = [0u8; 4];
        // A failing random source leaves a zero mask: still a valid (if predictable) frame.
        let _ = getrandom::fill(&mut mask);
        let mut header = frame.header().clone();
        header.mask = Some(mask);
        frame = Frame::from_payload(header, frame.into_payload());
    }
    let mut out = Vec::with_capacity(2 + 4 + 2 + e.reason.len());
    let _ = frame.format(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::Data;

    fn frame(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let header = FrameHeader {
            opcode,
            mask,
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .expect("format");
        out
    }

    /// Frames of every length format pass byte for byte, however the input is cut.
    #[tokio::test]
    async fn frames_pass_verbatim_in_any_cut() {
        let mut input = frame(OpCode::Data(Data::Text), b"hello", Some([1, 2, 3, 4]));
        input.extend(frame(OpCode::Data(Data::Binary), &vec![9u8; 70_000], None));
        input.extend(frame(OpCode::Data(Data::Binary), &vec![8u8; 300], None));
        input.extend(frame(OpCode::Data(Data::Text), b"", None));
        for cut in [1usize, 2, 3, 7, 13, 4096] {
            let (mut client, relay_in) = tokio::io::duplex(1 << 20);
            let (relay_out, mut upstream) = tokio::io::duplex(1 << 20);
            let (_end, ending) = watch::channel(None);
            let pump = tokio::spawn(pump(relay_in, relay_out, true, ending));
            for chunk in input.chunks(cut) {
                client.write_all(chunk).await.expect("write");
            }
            drop(client);
            let mut out = Vec::new();
            upstream.read_to_end(&mut out).await.expect("read");
            assert_eq!(out, input, "cut {cut}");
            assert_eq!(pump.await.expect("join"), input.len() as u64);
        }
    }

    /// An ending waits for the frame in flight to end, then sends the close frame (masked
    /// toward the upstream) and nothing more.
    #[tokio::test]
    async fn an_ending_is_said_at_the_next_frame_boundary() {
        let first = frame(OpCode::Data(Data::Binary), &[5u8; 1000], None);
        let (mut client, relay_in) = tokio::io::duplex(1 << 16);
        let (relay_out, mut upstream) = tokio::io::duplex(1 << 16);
        let (end, ending) = watch::channel(None);
        let pump = tokio::spawn(pump(relay_in, relay_out, true, ending));
        client.write_all(&first[..400]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = end.send(Some(Ending {
            code: 1001,
            reason: "bye",
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&first[400..]).await.expect("write");
        client
            .write_all(&frame(OpCode::Data(Data::Text), b"late", None))
            .await
            .expect("write");
        drop(client);
        pump.await.expect("join");
        let mut out = Vec::new();
        upstream.read_to_end(&mut out).await.expect("read");
        assert_eq!(out[..first.len()], first[..]);
        let mut cursor = Cursor::new(&out[first.len()..]);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("parse")
            .expect("a whole header");
        assert!(
            header.mask.is_some(),
            "frames toward the upstream are masked"
        );
        assert_eq!(len, 5);
        let at = first.len() + cursor.position() as usize;
        let mut payload = out[at..].to_vec();
        let mask = header.mask.expect("mask");
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        assert_eq!(payload, [0x03, 0xe9, b'b', b'y', b'e']);
    }

    /// Once its close frame went, a pump reads (and drops) what its side still sends until
    /// that side's own close frame has arrived whole, and only then lets the socket go.
    #[tokio::test]
    async fn an_ending_waits_for_the_close_reply() {
        let (mut client, relay_in) = tokio::io::duplex(1 << 16);
        let (relay_out, mut upstream) = tokio::io::duplex(1 << 16);
        let (end, ending) = watch::channel(None);
        let pump = tokio::spawn(pump(relay_in, relay_out, false, ending));
        let _ = end.send(Some(Ending {
            code: 1001,
            reason: "bye",
        }));
        let mut out = Vec::new();
        upstream.read_to_end(&mut out).await.expect("read");
        assert_eq!(
            out,
            close_frame(
                Ending {
                    code: 1001,
                    reason: "bye"
                },
                false
            )
        );
        // A frame in flight, then the reply cut in the middle of its header and payload.
        let reply = frame(OpCode::Control(Control::Close), &[0x03, 0xe9], Some([7; 4]));
        client
            .write_all(&frame(
                OpCode::Data(Data::Binary),
                &[1u8; 300],
                Some([1; 4]),
            ))
            .await
            .expect("write");
        client.write_all(&reply[..1]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pump.is_finished(), "gone before the reply");
        client
            .write_all(&reply[1..reply.len() - 1])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pump.is_finished(), "gone before the whole reply");
        let started = std::time::Instant::now();
        client
            .write_all(&reply[reply.len() - 1..])
            .await
            .expect("write");
        assert_eq!(pump.await.expect("join"), 0);
        assert!(
            started.elapsed() < CLOSE_REPLY / 2,
            "{:?}",
            started.elapsed()
        );
    }

    /// A side that ends at the moment an ending is asked: an upstream that closes its
    /// socket as soon as the other pump's close frame reaches it, raced with the ending.
    struct EndsWithTheEnding(watch::Sender<Option<Ending>>);

    impl AsyncRead for EndsWithTheEnding {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let _ = self.0.send(Some(Ending {
                code: 1001,
                reason: "bye",
            }));
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A side that ends just as an ending is asked does not take the close frame with it:
    /// the other side still gets the close frame, then the end (not an end alone, which a
    /// WebSocket client reads as a reset without the closing handshake).
    #[tokio::test]
    async fn an_ending_is_said_when_the_other_side_ends_with_it() {
        let (end, ending) = watch::channel(None);
        for masked in [false, true] {
            let (relay_out, mut client) = tokio::io::duplex(1 << 16);
            let copied = pump(
                EndsWithTheEnding(end.clone()),
                relay_out,
                masked,
                ending.clone(),
            )
            .await;
            assert_eq!(copied, 0);
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            let mut cursor = Cursor::new(&out[..]);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("parse")
                .expect("a close frame, whole");
            assert_eq!(header.opcode, OpCode::Control(Control::Close));
            assert_eq!(header.mask.is_some(), masked);
            assert_eq!(cursor.position() as usize + len as usize, out.len());
            let _ = end.send(None);
        }
    }

    /// Walks `input` in chunks of `cut` bytes as the relay does, asking for an ending once
    /// `end_after` bytes have arrived: what it sends, and whether the framing was refused.
    fn walk(input: &[u8], cut: usize, end_after: Option<usize>) -> (Vec<u8>, bool) {
        let (mut buf, mut out, mut remaining) = (Vec::new(), Vec::new(), 0u64);
        for chunk in input.chunks(cut.max(1)) {
            buf.extend_from_slice(chunk);
            let ending = end_after.is_some_and(|e| out.len() + buf.len() >= e);
            let (n, broken) = sendable(&buf, &mut remaining, ending);
            out.extend(buf.drain(..n));
            if broken.is_some() {
                return (out, true);
            }
            if ending && remaining == 0 {
                break;
            }
        }
        (out, false)
    }

    /// Where each frame of `input` ends, read whole.
    fn boundaries(input: &[u8]) -> Vec<usize> {
        let (mut at, mut ends) = (0usize, vec![0]);
        while at < input.len() {
            let mut c = Cursor::new(&input[at..]);
            match FrameHeader::parse(&mut c) {
                Ok(Some((_, len))) => {
                    at += c.position() as usize + len as usize;
                    ends.push(at.min(input.len()));
                }
                _ => break,
            }
        }
        ends
    }

    proptest::proptest! {
        /// However the bytes are cut, the relay sends the same bytes, in order, verbatim;
        /// asked to end, it stops exactly at a frame boundary.
        #[test]
        fn frame_walking_does_not_depend_on_the_cuts(
            frames in proptest::collection::vec((0u8..3, 0usize..300, proptest::option::of(proptest::array::uniform4(0u8..))), 0..8),
            junk in proptest::collection::vec(0u8.., 0..16),
            cut in 1usize..64,
            end_after in proptest::option::of(0usize..2000),
        ) {
            let mut input = Vec::new();
            for (kind, len, mask) in &frames {
                let op = [OpCode::Data(Data::Text), OpCode::Data(Data::Binary), OpCode::Data(Data::Continue)][*kind as usize];
                input.extend(frame(op, &vec![7u8; *len], *mask));
            }
            input.extend(&junk);
            let (whole, whole_refused) = walk(&input, input.len().max(1), None);
            let (cut_out, cut_refused) = walk(&input, cut, None);
            proptest::prop_assert_eq!(&cut_out, &whole);
            proptest::prop_assert_eq!(cut_refused, whole_refused);
            proptest::prop_assert!(input.starts_with(&whole));
            let (ended, _) = walk(&input, cut, end_after);
            proptest::prop_assert!(input.starts_with(&ended));
            if end_after.is_some() {
                proptest::prop_assert!(boundaries(&input).contains(&ended.len()), "ended at {} of {:?}", ended.len(), boundaries(&input));
            }
        }
    }
}
