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

/// Replaces every secret value in a line with `(redacted)`.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<Plaintext>,
}

impl Redactor {
    pub fn new(mut secrets: Vec<Plaintext>) -> Redactor {
        secrets.retain(|s| !s.expose().is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        Redactor { secrets }
    }

    pub fn redact(&self, line: String) -> String {
        let mut line = line;
        for secret in &self.secrets {
            let value = String::from_utf8_lossy(secret.expose());
            if line.contains(value.as_ref()) {
                line = line.replace(value.as_ref(), "(redacted)");
            }
        }
        line
    }
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
            assert!(line.starts_with("leak=(redacted)") && line.ends_with(" done"), "{line}");
        }
        // Inside a longer base64 text, at any of the three alignments, with the newline
        // `echo` adds: what encodes the secret alone is gone.
        for prefix in ["", "x", "xy"] {
            let text = format!("{prefix}{secret}\n");
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &text);
            let line = redactor.redact(encoded.clone());
            assert!(line.contains("(redacted)"), "{prefix}: {encoded} -> {line}");
            let left: String = line.split("(redacted)").collect();
            assert!(left.len() <= 8, "{prefix}: at most the edges are left: {line}");
        }
        // Short secrets are redacted as they are, but their encodings would match too much.
        let short = Redactor::new(vec![Plaintext::new(b"abc".to_vec())]);
        assert_eq!(short.redact("YWJj 616263 abc".into()), "YWJj 616263 (redacted)");
    }
}
