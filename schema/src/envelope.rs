//! The text form of an encrypted secret as it is stored in git.
//!
//! An envelope reads `meshploy:v1:<key-id>:<payload>`, where the payload is the URL-safe
//! base64 (no padding) of a 12-byte AES-GCM nonce followed by the ciphertext and its 16-byte
//! tag. This module only checks and splits that form; sealing and opening need keys and live
//! with the code that holds them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const PREFIX: &str = "meshploy:v1:";
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Largest envelope accepted, in characters: secrets are small and a huge one is a mistake.
pub const MAX_LEN: usize = 64 * 1024;

/// A well-formed sealed secret. Its contents are ciphertext, so it may be printed and
/// serialised freely; the plaintext never lives in this type.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Envelope {
    key_id: String,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

/// Why a string is not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a Meshploy secret envelope (it must start with `{PREFIX}`)")]
    MissingPrefix,
    #[error("envelope is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("envelope has no key id (expected `{PREFIX}<key-id>:<payload>`)")]
    MissingKeyId,
    /// The key id is not shown: what sits there may be a secret pasted in plain text.
    #[error(
        "envelope key id is not valid (1 to 32 lowercase letters, digits and `-`, starting with a letter or digit)"
    )]
    BadKeyId,
    #[error("envelope payload is not URL-safe base64")]
    BadBase64,
    #[error("envelope payload is too short to hold a nonce and an authentication tag (truncated?)")]
    Truncated,
}

impl Envelope {
    pub fn new(key_id: &str, nonce: [u8; NONCE_LEN], ciphertext: Vec<u8>) -> Envelope {
        Envelope {
            key_id: key_id.to_owned(),
            nonce,
            ciphertext,
        }
    }

    pub fn parse(text: &str) -> Result<Envelope, EnvelopeError> {
        let text = text.trim();
        if text.len() > MAX_LEN {
            return Err(EnvelopeError::TooLong);
        }
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(EnvelopeError::MissingPrefix)?;
        let (key_id, payload) = rest.split_once(':').ok_or(EnvelopeError::MissingKeyId)?;
        if !is_key_id(key_id) {
            return Err(EnvelopeError::BadKeyId);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| EnvelopeError::BadBase64)?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(EnvelopeError::Truncated);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let mut nonce_bytes = [0; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        Ok(Envelope::new(key_id, nonce_bytes, ciphertext.to_vec()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Ciphertext followed by the authentication tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }
}

/// Key ids appear in envelopes and in key configuration.
pub fn is_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut payload = Vec::with_capacity(NONCE_LEN + self.ciphertext.len());
        payload.extend_from_slice(&self.nonce);
        payload.extend_from_slice(&self.ciphertext);
        write!(
            f,
            "{PREFIX}{}:{}",
            self.key_id,
            URL_SAFE_NO_PAD.encode(payload)
        )
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Envelope({self})")
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Envelope::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_through_text() {
        let envelope = Envelope::new("k1", [7; NONCE_LEN], vec![1; 40]);
        let text = envelope.to_string();
        assert!(text.starts_with("meshploy:v1:k1:"));
        assert_eq!(Envelope::parse(&text), Ok(envelope));
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong() {
        let good = Envelope::new("k1", [7; NONCE_LEN], vec![1; 40]).to_string();
        let truncated = &good[..PREFIX.len() + 3 + 20];
        let cases = [
            ("hunter2", EnvelopeError::MissingPrefix),
            ("meshploy:v1:k1", EnvelopeError::MissingKeyId),
            ("meshploy:v1:K_1:AAAA", EnvelopeError::BadKeyId),
            ("meshploy:v1:k1:not base64!", EnvelopeError::BadBase64),
            (truncated, EnvelopeError::Truncated),
        ];
        for (text, expected) in cases {
            assert_eq!(Envelope::parse(text), Err(expected), "{text}");
        }
        assert_eq!(
            Envelope::parse(&format!("{good}{}", "A".repeat(MAX_LEN))),
            Err(EnvelopeError::TooLong)
        );
    }
}
