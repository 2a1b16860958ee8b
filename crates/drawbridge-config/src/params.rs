//! How a query parameter's name is read: one canonical spelling for every way common
//! frameworks would read the same parameter.

/// Why a query parameter's name cannot be read one way only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamNameError {
    /// Invalid percent-encoding, or not UTF-8 once decoded.
    #[error("query parameter name is not valid UTF-8 after percent-decoding")]
    Encoding,
    /// A control character (NUL and the like): frameworks cut or keep it differently.
    #[error("control character in a query parameter name")]
    Control,
}

/// The name a query parameter goes by, as the most lenient framework reads it:
/// percent-decoded with `+` as a space; everything from the first `[` on cut
/// (`tenant[]`, `tenant[0]` and `tenant[x]` are `tenant` to PHP and Rails); leading white
/// space trimmed, and `.` and spaces read as `_` (PHP); lower-cased (frameworks that match
/// names without case). A name with a control character is refused outright.
pub fn canonical_param(raw: &str) -> Result<String, ParamNameError> {
    let spaced;
    let raw = if raw.contains('+') {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    let decoded = decode(raw)?;
    if decoded.chars().any(char::is_control) {
        return Err(ParamNameError::Control);
    }
    let name = decoded.trim_start();
    let name = name.split_once('[').map_or(name, |(head, _)| head);
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '.' | ' ' => out.push('_'),
            c => out.extend(c.to_lowercase()),
        }
    }
    Ok(out)
}

/// Percent-decodes `s`, refusing invalid escapes and what is not UTF-8.
fn decode(s: &str) -> Result<String, ParamNameError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(ParamNameError::Encoding)?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ParamNameError::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_one_name() {
        for raw in [
            "tenant",
            "Tenant",
            "TENANT",
            "tenant[]",
            "tenant%5B%5D",
            "tenant[0]",
            "tenant[x][y]",
            "%74enant",
            "+tenant",
            "%20tenant",
            "TeNaNt[]",
        ] {
            assert_eq!(canonical_param(raw).as_deref(), Ok("tenant"), "{raw}");
        }
        assert_eq!(canonical_param("tenant.id").as_deref(), Ok("tenant_id"));
        assert_eq!(canonical_param("tenant+id").as_deref(), Ok("tenant_id"));
        assert_eq!(canonical_param("_method").as_deref(), Ok("_method"));
    }

    #[test]
    fn refuses_control_characters_and_bad_encoding() {
        for raw in ["tenant%00", "ten%0aant", "tenant%7f", "%09tenant"] {
            assert_eq!(canonical_param(raw), Err(ParamNameError::Control), "{raw}");
        }
        for raw in ["tenant%", "tenant%zz", "tenant%ff"] {
            assert_eq!(canonical_param(raw), Err(ParamNameError::Encoding), "{raw}");
        }
    }
}
