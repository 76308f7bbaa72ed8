//! Secret sealing: AES-256-GCM under named keys, bound to where a secret belongs.
//!
//! An envelope (see `schema::envelope`) names the key that sealed it, so keys can rotate:
//! several keys may be configured, new seals use the first (primary) one, and any configured
//! key opens what it sealed. The associated data binds a ciphertext to its place
//! (`meshploy/v1/git/<project>/<group>/<name>`), so an envelope copied to another project,
//! group or name fails to open instead of silently moving a secret.
//!
//! Plaintext lives only in [`Plaintext`], which has no `Display` or `Serialize` and whose
//! `Debug` prints nothing of the value.

use std::fmt;

use aes_gcm::aead::{Aead, Generate, Key, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use schema::envelope::{self, Envelope, NONCE_LEN};
use sha2::Sha256;

/// Errors from key configuration and from opening envelopes. None of them contains key
/// material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no secret keys configured: set MESHPLOY_SECRET_KEYS to `id:key` (make one with `meshploy secret keygen`)"
    )]
    NoKeys,
    #[error(
        "secret key entry {position} is not `id:key` (id: 1 to 32 lowercase letters, digits and `-`)"
    )]
    BadKeyEntry { position: usize },
    #[error(
        "secret key `{id}` is not 32 bytes of URL-safe base64 (make one with `meshploy secret keygen`)"
    )]
    BadKey { id: String },
    #[error("secret key id `{id}` is configured twice")]
    DuplicateKeyId { id: String },
    #[error(
        "secret {place} was sealed with key `{key_id}`, which is not configured (configured: {configured})"
    )]
    UnknownKey {
        place: String,
        key_id: String,
        configured: String,
    },
    #[error(
        "secret {place} cannot be opened with key `{key_id}`: the envelope was altered, sealed for another place, or sealed with a different key of the same id"
    )]
    Open { place: String, key_id: String },
}

/// Where a sealed value belongs: the associated data of its seal, and how messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    associated_data: String,
    label: String,
}

impl Place {
    /// A secret in a VariableGroup manifest in git.
    pub fn new(project: &str, group: &str, name: &str) -> Place {
        Place {
            associated_data: format!("meshploy/v1/git/{project}/{group}/{name}"),
            label: format!("`{project}/{group}/{name}`"),
        }
    }

    /// The same secret as stored in PostgreSQL: its row and column in `secrets`.
    pub fn stored(project: &str, group: &str, name: &str) -> Place {
        Place {
            associated_data: format!("meshploy/v1/db/secrets/{project}/{group}/{name}/ciphertext"),
            label: format!("stored `{project}/{group}/{name}`"),
        }
    }

    /// The key of the secret digests, stored in PostgreSQL.
    pub fn digest_key() -> Place {
        Place {
            associated_data: "meshploy/v1/db/settings/secret_digest_key".into(),
            label: "digest key".into(),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// A decrypted secret. It cannot be displayed or serialised; `Debug` hides it.
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    pub fn new(bytes: Vec<u8>) -> Plaintext {
        Plaintext(bytes)
    }

    /// The secret's bytes, for the few places that must hand it to a runtime.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Plaintext(sensitive)")
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        // Overwrite the value before the allocation is returned; `black_box` keeps the
        // compiler from removing the writes as dead stores.
        for byte in &mut self.0 {
            *byte = std::hint::black_box(0);
        }
    }
}

/// The configured keys, primary first.
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

impl Keyring {
    /// Parses `id:key[,id:key...]`, the form of `MESHPLOY_SECRET_KEYS` (a key file may also
    /// put one per line, with `#` comment lines); the first key is primary. Keys are 32 bytes of URL-safe base64 without padding.
    pub fn parse(spec: &str) -> Result<Keyring, SecretError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for (i, entry) in spec
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, key) = entry
                .split_once(':')
                .filter(|(id, _)| envelope::is_key_id(id))
                .ok_or(SecretError::BadKeyEntry { position: i + 1 })?;
            let bad = || SecretError::BadKey { id: id.to_owned() };
            let bytes = URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .map_err(|_| bad())?;
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| bad())?;
            if keys.iter().any(|(existing, _)| existing == id) {
                return Err(SecretError::DuplicateKeyId { id: id.to_owned() });
            }
            keys.push((id.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(SecretError::NoKeys);
        }
        Ok(Keyring { keys })
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Seals `plaintext` for `place` under the primary key with a fresh random nonce.
    pub fn seal(&self, place: &Place, plaintext: &Plaintext) -> Envelope {
        let (id, cipher) = &self.keys[0];
        let nonce = Nonce::generate();
        let payload = Payload {
            msg: plaintext.expose(),
            aad: place.associated_data.as_bytes(),
        };
        let ciphertext = cipher
            .encrypt(&nonce, payload)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut nonce_bytes = [0; NONCE_LEN];
        nonce_bytes.copy_from_slice(&nonce);
        Envelope::new(id, nonce_bytes, ciphertext)
    }

    /// Opens an envelope sealed for `place` by any configured key.
    pub fn open(&self, place: &Place, envelope: &Envelope) -> Result<Plaintext, SecretError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| id == envelope.key_id())
            .ok_or_else(|| SecretError::UnknownKey {
                place: place.to_string(),
                key_id: envelope.key_id().to_owned(),
                configured: self.ids().join(", "),
            })?;
        let nonce = Nonce::from(*envelope.nonce());
        let payload = Payload {
            msg: envelope.ciphertext(),
            aad: place.associated_data.as_bytes(),
        };
        cipher
            .decrypt(&nonce, payload)
            .map(Plaintext)
            .map_err(|_| SecretError::Open {
                place: place.to_string(),
                key_id: envelope.key_id().to_owned(),
            })
    }
}

/// Keyed digests of secrets, which plans compare instead of values. The digest binds the
/// secret's place, so equal values in two places do not show as equal.
pub struct Digester(Hmac<Sha256>);

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Digester(sensitive)")
    }
}

impl Digester {
    /// A digester under a new random key, returned sealed for storage.
    pub fn generate(keys: &Keyring) -> (Digester, Envelope) {
        let key = Plaintext::new(Key::<Aes256Gcm>::generate().to_vec());
        let sealed = keys.seal(&Place::digest_key(), &key);
        (Digester::from_key(&key), sealed)
    }

    /// The digester whose key was sealed by [`Digester::generate`].
    pub fn open(keys: &Keyring, sealed: &Envelope) -> Result<Digester, SecretError> {
        let key = keys.open(&Place::digest_key(), sealed)?;
        Ok(Digester::from_key(&key))
    }

    fn from_key(key: &Plaintext) -> Digester {
        Digester(
            <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
                .expect("HMAC takes keys of any length"),
        )
    }

    /// `hmac-sha256:<base64url>` of the place and the value.
    pub fn digest(&self, place: &Place, value: &Plaintext) -> String {
        let mut mac = self.0.clone();
        mac.update(place.associated_data.as_bytes());
        mac.update(&[0]);
        mac.update(value.expose());
        format!(
            "hmac-sha256:{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }
}

/// A new random key in the form `MESHPLOY_SECRET_KEYS` takes (without its id).
pub fn generate_key() -> String {
    URL_SAFE_NO_PAD.encode(Key::<Aes256Gcm>::generate())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "example:GVHMrCSPrvFvxzwffVUIQXs2l8j0PSK0SWf8aYmt5zk";

    fn keyring() -> Keyring {
        Keyring::parse(&format!("k2:{},{EXAMPLE}", generate_key())).expect("keys")
    }

    #[test]
    fn seals_under_the_primary_key_and_opens_with_any() {
        let keys = keyring();
        let place = Place::new("shop", "db", "PASSWORD");
        let envelope = keys.seal(&place, &Plaintext::new(b"hunter2".to_vec()));
        assert_eq!(envelope.key_id(), "k2");
        assert!(!envelope.to_string().contains("hunter2"));
        let opened = keys.open(&place, &envelope).expect("open");
        assert_eq!(opened.expose(), b"hunter2");
        // Two seals of the same value differ (fresh nonces).
        let again = keys.seal(&place, &Plaintext::new(b"hunter2".to_vec()));
        assert_ne!(envelope, again);
    }

    #[test]
    fn the_committed_example_envelope_opens_with_the_documented_key() {
        let text = include_str!("../../examples/shop/variables.yaml");
        let sealed = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("STRIPE_API_KEY: "))
            .expect("example envelope");
        let envelope = Envelope::parse(sealed).expect("envelope");
        let keys = Keyring::parse(EXAMPLE).expect("example key");
        let opened = keys
            .open(&Place::new("shop", "payments", "STRIPE_API_KEY"), &envelope)
            .expect("opens");
        assert_eq!(opened.expose(), b"sk_test_example_4242");
    }

    #[test]
    fn moved_tampered_and_foreign_envelopes_fail_clearly() {
        let keys = keyring();
        let place = Place::new("shop", "db", "PASSWORD");
        let envelope = keys.seal(&place, &Plaintext::new(b"hunter2".to_vec()));

        let moved = keys.open(&Place::new("blog", "db", "PASSWORD"), &envelope);
        let message = moved.expect_err("moved").to_string();
        assert!(
            message.contains("`blog/db/PASSWORD`") && message.contains("sealed for another place"),
            "{message}"
        );

        let mut bytes = envelope.ciphertext().to_vec();
        bytes[0] ^= 1;
        let tampered = Envelope::new("k2", *envelope.nonce(), bytes);
        assert!(matches!(
            keys.open(&place, &tampered),
            Err(SecretError::Open { .. })
        ));

        let other = Keyring::parse(&format!("k2:{}", generate_key())).expect("keys");
        assert!(matches!(
            other.open(&place, &envelope),
            Err(SecretError::Open { .. })
        ));

        let unknown = Keyring::parse(EXAMPLE)
            .expect("keys")
            .open(&place, &envelope);
        let message = unknown.expect_err("unknown key").to_string();
        assert!(
            message.contains("sealed with key `k2`, which is not configured (configured: example)"),
            "{message}"
        );
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn key_configuration_errors_never_echo_key_material() {
        let cases = [
            ("", "no secret keys configured"),
            ("nocolon", "entry 1 is not `id:key`"),
            ("Bad_Id:AAAA", "entry 1 is not `id:key`"),
            ("k1:c2hvcnQ", "secret key `k1` is not 32 bytes"),
        ];
        for (spec, expected) in cases {
            let message = Keyring::parse(spec).expect_err(spec).to_string();
            assert!(message.contains(expected), "{spec}: {message}");
            assert!(!message.contains("c2hvcnQ"), "{message}");
        }
        let key = generate_key();
        let twice = Keyring::parse(&format!("a:{key},a:{key}")).expect_err("duplicate");
        assert!(twice.to_string().contains("`a` is configured twice"));
        assert_eq!(
            format!("{:?}", Plaintext::new(b"x".to_vec())),
            "Plaintext(sensitive)"
        );
    }
}
