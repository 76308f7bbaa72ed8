//! How an error is shown to a person: one line with every cause.
//!
//! Transport errors often say only "handshake failed" or "connection error" at the top and
//! why (refused, TLS, DNS) in their sources, so every message shown to a user or logged goes
//! through [`causes`]. It is the one rule for the whole workspace.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
