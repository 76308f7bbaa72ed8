//! Request paths as the proxy matches and forwards them: normalised once, so that a path can
//! never escape the route prefix it matched.
//!
//! The rule (RFC 3986 §6.2.2 and §5.2.4):
//! - percent-encoded unreserved characters (letters, digits, `-`, `.`, `_`, `~`) are decoded,
//!   so `%2e%2e` is `..`; every other escape is kept as it was sent (with uppercase hex);
//! - dot segments are removed: `/a/./b` is `/a/b`, `/a/../b` is `/b`;
//! - a path that climbs above the root (`/..`), that is not absolute, or that holds an
//!   encoded `/` or `\` (or a raw `\`) next to a dot segment (`..%2f`, `%2e%2e%5c`) is refused
//!   with 400, since a backend that decodes those would see a different path;
//! - the route is matched on the normalised path, and exactly that path is forwarded.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not an absolute path (`*`, or empty).
    NotAbsolute,
    /// Dot segments that climb above the root.
    AboveRoot,
    /// An encoded `/` or `\`, or a raw `\`, beside a dot segment.
    HiddenSeparator,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

/// The normalised form of `raw`, the path of a request target without its query.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // The common case, a plain path with no escapes and no dot segments, is returned as is.
    let plain =
        !raw.contains('%') && !raw.contains('\\') && !raw.split('/').any(|s| s == "." || s == "..");
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if hides_separator(segment) {
            return Err(PathError::HiddenSeparator);
        }
        match *segment {
            "." => {
                // `/a/.` is the directory `/a/`.
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if i == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in out {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// Decodes `%XX` escapes of unreserved characters; keeps the others, in uppercase hex.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Paths of valid request targets are ASCII; hyper refuses anything else.
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let byte = high << 4 | low;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(high)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(low)]));
        }
        i += 3;
    }
    Ok(out)
}

fn hex(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Whether a segment splits, at an encoded `/` or `\` or a raw `\`, into parts of which one is
/// a dot segment: a backend that decodes the separator would climb.
fn hides_separator(segment: &str) -> bool {
    let parts: Vec<&str> = segment
        .split(['\\'])
        .flat_map(|part| part.split("%2F"))
        .flat_map(|part| part.split("%5C"))
        .collect();
    parts.len() > 1 && parts.iter().any(|p| *p == "." || *p == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_and_unreserved_escapes_decoded() {
        for (raw, normal) in [
            ("/", "/"),
            ("/api/v1", "/api/v1"),
            ("/api/../secret.txt", "/secret.txt"),
            ("/api/%2e%2e/secret.txt", "/secret.txt"),
            ("/api/%2E%2E/secret.txt", "/secret.txt"),
            ("/api/./../admin", "/admin"),
            ("/app/../admin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/api//../x", "/api/x"),
            ("/%7Euser/%41", "/~user/A"),
            ("/files/a%20b%2fc", "/files/a%20b%2Fc"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn climbing_above_the_root_and_hidden_separators_are_refused() {
        for (raw, error) in [
            ("/..", PathError::AboveRoot),
            ("/../etc/passwd", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/api/..%2fsecret", PathError::HiddenSeparator),
            ("/api/..%2Fsecret", PathError::HiddenSeparator),
            ("/api/%2e%2e%5csecret", PathError::HiddenSeparator),
            ("/api/..\\secret", PathError::HiddenSeparator),
            ("/api/x%2f..", PathError::HiddenSeparator),
            ("/api/%zz", PathError::BadEscape),
            ("/api/%2", PathError::BadEscape),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(raw), Err(error), "{raw}");
        }
    }

    #[test]
    fn a_plain_path_is_not_copied() {
        assert!(matches!(normalize("/api/v1/items"), Ok(Cow::Borrowed(_))));
    }
}
