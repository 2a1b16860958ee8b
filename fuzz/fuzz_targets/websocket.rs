//! The WebSocket relay's frame walking on arbitrary bytes from either side: never panics,
//! sends a prefix of what arrived, verbatim; sends the same bytes however they are cut into
//! reads; and, asked to end, stops exactly at a frame boundary.
#![no_main]

use drawbridge_proxy::websocket::sendable;
use libfuzzer_sys::fuzz_target;

/// Walks `input` in reads of `cut` bytes as the relay does, asking for an ending once
/// `end_after` bytes have arrived. What goes out, whether the framing broke, and whether
/// the walk stood between frames at the end.
fn walk(input: &[u8], cut: usize, end_after: Option<usize>) -> (Vec<u8>, bool, bool) {
    let (mut buf, mut out, mut remaining) = (Vec::new(), Vec::new(), 0u64);
    for chunk in input.chunks(cut.max(1)) {
        buf.extend_from_slice(chunk);
        let ending = end_after.is_some_and(|e| out.len() + buf.len() >= e);
        let (n, broken) = sendable(&buf, &mut remaining, ending);
        out.extend(buf.drain(..n));
        if broken.is_some() {
            return (out, true, remaining == 0);
        }
        if ending && remaining == 0 {
            break;
        }
    }
    (out, false, remaining == 0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let Some((&end, input)) = rest.split_first() else { return };
    let (whole, whole_broken, _) = walk(input, input.len().max(1), None);
    assert!(input.starts_with(&whole));
    let (cut_out, cut_broken, _) = walk(input, usize::from(cut), None);
    assert_eq!(cut_out, whole, "the same bytes however they are cut");
    assert_eq!(cut_broken, whole_broken);
    // Asked to end after `end * 4` bytes arrived: a prefix that ends between frames.
    let (ended, _, between) = walk(input, usize::from(cut), Some(usize::from(end) * 4));
    assert!(input.starts_with(&ended));
    assert!(between || ended.len() == whole.len());
});
