//! How text is shown to a person: an error as one line with every cause ([`causes`]), text
//! from elsewhere made safe for a terminal ([`printable`]), and sizes.
//!
//! Transport errors often say only "handshake failed" or "connection error" at the top and
//! why (refused, TLS, DNS) in their sources, so every message shown to a user or logged goes
//! through [`causes`]. It is the one rule for the whole workspace.
//!
//! What a process printed, what a manifest or a commit says and what a forge answered may
//! hold escape sequences that a terminal obeys: clear the screen, set the window title, hide
//! the lines after them. Everything the CLI prints that came from such a place goes through
//! [`printable`]; JSON output stays exact, since its readers are programs.
//!
//! Sizes are written and read in binary units (`64 MiB`) by [`bytes`] and [`parse_bytes`],
//! for settings and messages alike.

use std::borrow::Cow;

/// An error and its causes, joined as `outer: inner`. A cause whose text the message already
/// holds (wrappers that repeat their source) is not repeated.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

const UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// `n` bytes in the largest binary unit that divides it (`64 MiB`, `1536 KiB`, `100 B`).
pub fn bytes(n: u64) -> String {
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| n >= *size && n.is_multiple_of(*size))
        .copied()
        .unwrap_or(("B", 1));
    format!("{} {unit}", n / size)
}

/// A size as people write it: a whole number, optionally followed by `B`, `KiB`, `MiB` or
/// `GiB` (`64MiB`, `64 MiB`, `4096`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 64MiB or 512KiB"))?;
    let unit = unit.trim();
    let scale = match UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
    {
        Some((_, scale)) => *scale,
        None if unit.is_empty() => 1,
        None => return Err(format!("`{unit}` is not a unit: use B, KiB, MiB or GiB")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Whether [`printable`] keeps line breaks and tabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// A multi-line value shown as lines: `\n` and `\t` stay.
    Keep,
    /// One line of output, such as a log line or a table cell: `\n` is escaped too (`\t`
    /// stays).
    Escape,
}

/// `text` with every control character (C0, DEL and C1) written visibly as `\x1b`, `\x7f`
/// or `\u{9b}`, except line breaks and tabs as `lines` says. A backslash is left alone: the
/// escapes are for reading, not for parsing back.
pub fn printable(text: &str, lines: Lines) -> Cow<'_, str> {
    let kept = |c: char| c == '\t' || (c == '\n' && lines == Lines::Keep);
    if !text.chars().any(|c| c.is_control() && !kept(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match u32::from(c) {
            _ if !c.is_control() || kept(c) => out.push(c),
            code @ 0..=0x7f => out.push_str(&format!("\\x{code:02x}")),
            code => out.push_str(&format!("\\u{{{code:x}}}")),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_in_the_largest_whole_unit_and_read_back() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1536 << 10), "1536 KiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(0), "0 B");
        for n in [0, 1, 100, 1 << 10, 3 << 20, 5 << 30, 12345] {
            assert_eq!(parse_bytes(&bytes(n)), Ok(n));
        }
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("256 kib"), Ok(256 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5MiB",
            "12 MB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error, &'static str);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn every_cause_is_named_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            causes(&Wrapped(refused, "handshake failed")),
            "handshake failed: refused"
        );
        let repeated = std::io::Error::other("disk full");
        assert_eq!(
            causes(&Wrapped(repeated, "cannot write: disk full")),
            "cannot write: disk full"
        );
        assert_eq!(causes(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn control_characters_are_shown_rather_than_obeyed() {
        let text = "\x1b]0;title\x07one\n\ttwo\x7f\u{9b}31m\r";
        assert_eq!(
            printable(text, Lines::Keep),
            "\\x1b]0;title\\x07one\n\ttwo\\x7f\\u{9b}31m\\x0d"
        );
        assert_eq!(
            printable(text, Lines::Escape),
            "\\x1b]0;title\\x07one\\x0a\ttwo\\x7f\\u{9b}31m\\x0d"
        );
        assert!(matches!(
            printable("plain, naïve \\ and\ttabbed", Lines::Escape),
            Cow::Borrowed(_)
        ));
    }
}
