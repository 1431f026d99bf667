//! RFC 3461 section 4 xtext, the encoding of `ENVID=` and `ORCPT=` values: printable ASCII
//! except `+` and `=` as it is, every other byte as `+HH` (upper-case hex).

/// `text` as xtext (a UTF-8 character byte by byte).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The text an xtext stands for; `None` when it is not xtext (a bare `=`, a character outside
/// `!`..`~`, a `+` not followed by two upper-case hex digits) or not UTF-8.
pub fn decode(xtext: &str) -> Option<String> {
    let bytes = xtext.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b @ b'!'..=b'~' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        for text in ["plain", "a+b=c", "sp ace", "Ünïcode@example.org", "", "+2B"] {
            let x = encode(text);
            assert!(
                x.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='),
                "{x}"
            );
            assert_eq!(decode(&x).as_deref(), Some(text), "{x}");
        }
        assert_eq!(encode("a b+"), "a+20b+2B");
        for bad in ["a=b", "a+2", "a+2b", "a+G0", "a b", "+FF"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
