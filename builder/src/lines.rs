//! Captured output as lines: bounded in length whatever a process writes, and with every
//! secret value replaced. Pure: bytes in, lines out.

use reconciler::secrets::Plaintext;

/// Splits a byte stream into lines of at most `max` bytes. A longer line is cut, marked,
/// and the rest of it skipped, so a process that never writes a newline costs `max` bytes.
#[derive(Debug)]
pub struct Lines {
    buffer: Vec<u8>,
    max: usize,
    skipping: bool,
}

/// What ends a cut line.
pub const CUT: &str = " … (line cut)";

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            buffer: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds `bytes` and returns the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let (part, rest) = match newline {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if !self.skipping {
                let room = self.max - self.buffer.len();
                self.buffer.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    lines.push(self.take(true));
                    self.skipping = true;
                }
            }
            match rest {
                Some(rest) => {
                    if !self.skipping {
                        lines.push(self.take(false));
                    }
                    self.skipping = false;
                    bytes = rest;
                }
                None => break,
            }
        }
        lines
    }

    /// The last line, if the stream ended without a newline.
    pub fn finish(mut self) -> Option<String> {
        (!self.buffer.is_empty() && !self.skipping).then(|| self.take(false))
    }

    fn take(&mut self, cut: bool) -> String {
        let bytes = std::mem::take(&mut self.buffer);
        let mut line = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\r')
            .to_owned();
        if cut {
            line.push_str(CUT);
        }
        line
    }
}

/// Replaces every secret value in a line with `(redacted)`, and the common encodings of each:
/// base64 in its standard and URL-safe alphabets (padded or not, and at any of the three
/// alignments inside a longer encoded text), hexadecimal in either case, and
/// percent-encoding. The encodings are a courtesy against accidents such as
/// `echo "$TOKEN" | base64` in a script, not a boundary: a process holding a secret can
/// always encode it some other way.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Each secret and its encodings, longest first, so a pattern that contains another is
    /// replaced whole.
    patterns: Vec<Plaintext>,
}

/// The shortest encoding looked for: shorter ones (those of secrets under about six bytes)
/// would match ordinary text.
const MIN_ENCODED: usize = 8;

impl Redactor {
    pub fn new(secrets: Vec<Plaintext>) -> Redactor {
        let mut patterns = Vec::new();
        for secret in secrets {
            if secret.expose().is_empty() {
                continue;
            }
            patterns.extend(
                encodings(secret.expose())
                    .into_iter()
                    .filter(|e| e.expose().len() >= MIN_ENCODED),
            );
            patterns.push(secret);
        }
        patterns.sort_by(|a, b| {
            let (a, b) = (a.expose(), b.expose());
            b.len().cmp(&a.len()).then_with(|| a.cmp(b))
        });
        patterns.dedup_by(|a, b| a.expose() == b.expose());
        Redactor { patterns }
    }

    pub fn redact(&self, line: String) -> String {
        let mut line = line;
        for pattern in &self.patterns {
            let value = String::from_utf8_lossy(pattern.expose());
            if line.contains(value.as_ref()) {
                line = line.replace(value.as_ref(), "(redacted)");
            }
        }
        line
    }
}

/// How `secret` reads once encoded, each kept as sensitively as the secret itself.
fn encodings(secret: &[u8]) -> Vec<Plaintext> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = |s: String| Plaintext::new(s.into_bytes());
    let mut out = Vec::new();
    for (padded, bare) in [(STANDARD, STANDARD_NO_PAD), (URL_SAFE, URL_SAFE_NO_PAD)] {
        out.push(text(padded.encode(secret)));
        // Inside a longer encoded text the secret starts 0, 1 or 2 bytes into a 3-byte
        // group; only the characters made of its bits alone stand for it there.
        for offset in 0..3 {
            let mut bytes = vec![0; offset];
            bytes.extend_from_slice(secret);
            let shifted = Plaintext::new(bytes);
            let encoded = text(bare.encode(shifted.expose()));
            let start = (8 * offset).div_ceil(6);
            let end = 8 * (offset + secret.len()) / 6;
            out.push(Plaintext::new(encoded.expose()[start..end].to_vec()));
        }
    }
    let hex = |digits: &[u8; 16]| {
        let bytes = secret
            .iter()
            .flat_map(|b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]])
            .collect();
        Plaintext::new(bytes)
    };
    out.push(hex(b"0123456789abcdef"));
    out.push(hex(b"0123456789ABCDEF"));
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if !secret.iter().all(|b| unreserved(*b)) {
        for digits in [b"0123456789ABCDEF", b"0123456789abcdef"] {
            let mut bytes = Vec::new();
            for b in secret {
                if unreserved(*b) {
                    bytes.push(*b);
                } else {
                    bytes.extend([
                        b'%',
                        digits[usize::from(b >> 4)],
                        digits[usize::from(b & 15)],
                    ]);
                }
            }
            out.push(Plaintext::new(bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_the_last_one_is_kept() {
        let mut lines = Lines::new(100);
        assert_eq!(lines.push(b"hel"), Vec::<String>::new());
        assert_eq!(lines.push(b"lo\r\nwor"), ["hello"]);
        assert_eq!(lines.push(b"ld\n\n"), ["world", ""]);
        assert_eq!(lines.push(b"tail"), Vec::<String>::new());
        assert_eq!(lines.finish().as_deref(), Some("tail"));
    }

    #[test]
    fn a_line_without_end_is_cut_and_the_rest_skipped() {
        let mut lines = Lines::new(4);
        let mut out = lines.push(b"abcdefgh");
        out.extend(lines.push(&[b'x'; 10_000]));
        out.extend(lines.push(b"yy\nok\n"));
        assert_eq!(out, [format!("abcd{CUT}"), "ok".to_owned()]);
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut lines = Lines::new(100);
        assert_eq!(lines.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }

    #[test]
    fn every_secret_value_is_redacted_longest_first() {
        let redactor = Redactor::new(vec![
            Plaintext::new(b"abc".to_vec()),
            Plaintext::new(b"abcdef".to_vec()),
            Plaintext::new(Vec::new()),
        ]);
        assert_eq!(
            redactor.redact("key=abcdef and abc, abc".into()),
            "key=(redacted) and (redacted), (redacted)"
        );
        assert_eq!(redactor.redact("nothing here".into()), "nothing here");
    }

    #[test]
    fn the_common_encodings_of_a_secret_are_redacted_too() {
        // printf %s "$SECRET" | base64, | basenc --base64url, | xxd -p, and as a URL encodes it.
        let secret = "p4ss?>~word/+key";
        let redactor = Redactor::new(vec![Plaintext::new(secret.as_bytes().to_vec())]);
        for encoded in [
            "cDRzcz8+fndvcmQvK2tleQ==",
            "cDRzcz8+fndvcmQvK2tleQ",
            "cDRzcz8-fndvcmQvK2tleQ==",
            "cDRzcz8-fndvcmQvK2tleQ",
            "703473733f3e7e776f72642f2b6b6579",
            "703473733F3E7E776F72642F2B6B6579",
            "p4ss%3F%3E~word%2F%2Bkey",
            "p4ss%3f%3e~word%2f%2bkey",
        ] {
            let line = redactor.redact(format!("leak={encoded} done"));
            assert!(!line.contains(&encoded[..12]), "{encoded}: {line}");
            assert!(
                line.starts_with("leak=(redacted)") && line.ends_with(" done"),
                "{line}"
            );
        }
        // Inside a longer base64 text, at any of the three alignments, with the newline
        // `echo` adds: what encodes the secret alone is gone.
        for prefix in ["", "x", "xy"] {
            let text = format!("{prefix}{secret}\n");
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &text);
            let line = redactor.redact(encoded.clone());
            assert!(line.contains("(redacted)"), "{prefix}: {encoded} -> {line}");
            let left: String = line.split("(redacted)").collect();
            assert!(
                left.len() <= 8,
                "{prefix}: at most the edges are left: {line}"
            );
        }
        // Short secrets are redacted as they are, but their encodings would match too much.
        let short = Redactor::new(vec![Plaintext::new(b"abc".to_vec())]);
        assert_eq!(
            short.redact("YWJj 616263 abc".into()),
            "YWJj 616263 (redacted)"
        );
    }
}
