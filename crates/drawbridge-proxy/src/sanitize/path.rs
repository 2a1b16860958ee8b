//! One path, one meaning (ARCHITECTURE.md §4.3): the request target's path, normalised once.

/// A request path after normalisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NormalPath {
    /// Decoded, dot segments resolved, duplicate slashes merged: what routes and policy see.
    pub decoded: String,
    /// `decoded` re-encoded in one canonical way, when it differs from `decoded`.
    encoded: Option<String>,
}

impl NormalPath {
    /// `decoded` re-encoded in one canonical way: what the upstream receives.
    pub fn encoded(&self) -> &str {
        self.encoded.as_deref().unwrap_or(&self.decoded)
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path.
    #[error("path does not start with `/`")]
    NotOriginForm,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidEncoding,
    /// `%2F`, `%5C`, `%2E`, `%00` or another encoded control byte.
    #[error("encoded separator, dot or control character")]
    EncodedSeparator,
    /// An encoding of an encoding of a separator (`%252e`).
    #[error("double-encoded separator or dot")]
    DoubleEncoded,
    /// Decoded bytes are not UTF-8.
    #[error("path is not UTF-8")]
    NotUtf8,
    /// `\` or a control character.
    #[error("backslash or control character in path")]
    ForbiddenByte,
    /// `;` path parameters.
    #[error("`;` path parameter")]
    Semicolon,
    /// `..` above the root.
    #[error("dot segments climb above the root")]
    AboveRoot,
    /// A character that compatibility normalisation (NFKC) turns into a separator, a dot or
    /// another delimiter (`／`, `．`, `‥`, `＼`): a backend that normalises reads another path.
    #[error("look-alike of a separator or dot (NFKC)")]
    LookAlike,
}

/// Normalises the path of a request target.
pub fn normalize_path(raw: &str) -> Result<NormalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_canonical(raw) {
        // Nothing to decode, resolve or encode: the path is its own normal form.
        return Ok(NormalPath {
            decoded: raw.to_owned(),
            encoded: None,
        });
    }
    normalize_slowly(raw)
}

/// Decodes, resolves and re-encodes `raw` (starting with `/`).
fn normalize_slowly(raw: &str) -> Result<NormalPath, PathError> {
    let decoded = decode(raw.as_bytes())?;
    if !decoded.is_ascii() {
        refuse_look_alikes(&decoded)?;
    }
    let segments = resolve(&decoded)?;
    let mut decoded = String::with_capacity(raw.len());
    let mut encoded = String::with_capacity(raw.len() + 8);
    for seg in &segments.parts {
        decoded.push('/');
        decoded.push_str(seg);
        encoded.push('/');
        encode_segment(seg, &mut encoded);
    }
    if segments.trailing_slash || segments.parts.is_empty() {
        decoded.push('/');
        encoded.push('/');
    }
    let encoded = (encoded != decoded).then_some(encoded);
    Ok(NormalPath { decoded, encoded })
}

fn decode(raw: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|c| hex(*c));
                let lo = raw.get(i + 2).and_then(|c| hex(*c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::InvalidEncoding);
                };
                let v = hi << 4 | lo;
                if matches!(v, b'/' | b'\\' | b'.') || v < 0x20 || v == 0x7f {
                    return Err(PathError::EncodedSeparator);
                }
                if v == b'%' && is_dangerous_escape(raw.get(i + 3..i + 5)) {
                    return Err(PathError::DoubleEncoded);
                }
                out.push(v);
                i += 3;
            }
            b'\\' => return Err(PathError::ForbiddenByte),
            b';' => return Err(PathError::Semicolon),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ForbiddenByte),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // A decoded `;` only comes from `%3B`: it is data, and is re-encoded upstream.
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Characters whose count must not change under NFKC: separators, dots and the delimiters
/// a second decoder would act on.
const DELIMITERS: &[char] = &['/', '\\', '.', ';', '%', '?', '#', ':'];

/// Refuses a path in which compatibility normalisation (NFKC, as some backends and file
/// systems apply) would create or remove a separator, a dot or another delimiter, or make a
/// control character. ASCII segments are unchanged by NFKC and never looked at.
fn refuse_look_alikes(decoded: &str) -> Result<(), PathError> {
    use unicode_normalization::UnicodeNormalization;
    for seg in decoded.split('/').filter(|s| !s.is_ascii()) {
        let normal: String = seg.nfkc().collect();
        if normal == seg {
            continue;
        }
        let count = |s: &str, c: char| s.chars().filter(|x| *x == c).count();
        if DELIMITERS
            .iter()
            .any(|&c| count(seg, c) != count(&normal, c))
            || normal.chars().any(char::is_control)
        {
            return Err(PathError::LookAlike);
        }
    }
    Ok(())
}

/// After `%25`: would the next two characters decode, a second time, to a separator or dot?
fn is_dangerous_escape(next: Option<&[u8]>) -> bool {
    let Some([a, b]) = next else { return false };
    match (hex(*a), hex(*b)) {
        (Some(hi), Some(lo)) => {
            let v = hi << 4 | lo;
            matches!(v, b'/' | b'\\' | b'.') || v < 0x20 || v == 0x7f || v == b'%'
        }
        _ => false,
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

struct Segments<'a> {
    parts: Vec<&'a str>,
    trailing_slash: bool,
}

fn resolve(path: &str) -> Result<Segments<'_>, PathError> {
    let mut parts: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first element is the empty string before the leading `/`.
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => parts.push(s),
        }
    }
    Ok(Segments {
        parts,
        trailing_slash,
    })
}

/// Whether `raw` (starting with `/`) is already what normalisation makes of it: only
/// characters kept as they are, no empty segment but a last one, no dot segment. Most
/// paths are; they skip the decode, resolve and encode passes.
fn is_canonical(raw: &str) -> bool {
    let mut segments = raw.as_bytes()[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        let resolved = match seg {
            // `//` is merged; a last empty segment is the trailing slash, kept.
            b"" => last,
            b"." | b".." => false,
            _ => seg.iter().all(|&b| is_kept(b)),
        };
        if !resolved {
            return false;
        }
    }
    true
}

/// RFC 3986 `pchar` less `;` and `%`: the bytes a segment keeps as they are.
fn is_kept(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Percent-encodes everything but RFC 3986 `pchar` (minus `;`, `%`).
fn encode_segment(seg: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in seg.as_bytes() {
        let keep = is_kept(b);
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path the shortcut takes is one the full normalisation leaves as it is: checked
    /// over every path of up to six characters after the `/` from an alphabet of
    /// separators, dots, escapes and plain characters.
    #[test]
    fn the_shortcut_agrees_with_the_full_normalisation() {
        const ALPHABET: &[u8] = b"/.a%2F~;";
        let mut taken = 0;
        let mut path = vec![b'/'];
        fn walk(path: &mut Vec<u8>, depth: usize, taken: &mut usize) {
            let raw = std::str::from_utf8(path).expect("ASCII");
            if is_canonical(raw) {
                *taken += 1;
                let full = normalize_slowly(raw).expect("a canonical path normalises");
                assert_eq!(full.decoded, raw, "decoded form of {raw}");
                assert_eq!(full.encoded(), raw, "encoded form of {raw}");
            }
            if depth == 0 {
                return;
            }
            for &b in ALPHABET {
                path.push(b);
                walk(path, depth - 1, taken);
                path.pop();
            }
        }
        walk(&mut path, 6, &mut taken);
        // The shortcut is taken for many of them, not none.
        assert!(taken > 10_000, "{taken}");
    }

    #[test]
    fn paths_that_need_work_take_the_long_way() {
        for raw in [
            "//a", "/a//b", "/.", "/..", "/a/.", "/a/..", "/./a", "/a%20b", "/%61", "/a;b", "/a b",
            "/é", "/a\\b",
        ] {
            assert!(!is_canonical(raw), "{raw}");
        }
        for raw in [
            "/",
            "/a",
            "/a/",
            "/public/x",
            "/a.b/...",
            "/v1/users/42:get",
        ] {
            assert!(is_canonical(raw), "{raw}");
            assert_eq!(
                normalize_path(raw).as_ref().map(NormalPath::encoded),
                Ok(raw)
            );
        }
    }
}
