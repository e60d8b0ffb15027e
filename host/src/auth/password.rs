//! Password hashes in RabbitMQ's format, so that its definitions import unchanged: the
//! `password_hash` is base64 of a 4-byte random salt followed by the digest of salt and
//! password, under `hashing_algorithm` `rabbit_password_hashing_sha256` (RabbitMQ's default)
//! or `rabbit_password_hashing_sha512`. Comparisons run in constant time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Salt bytes, as RabbitMQ generates them.
const SALT_LEN: usize = 4;

/// A hashing scheme RabbitMQ names in definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rabbit_password_hashing_sha256`: RabbitMQ's default.
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
}

/// Why a stored hash or scheme was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// A scheme bourse does not implement (RabbitMQ's legacy MD5 among them).
    #[error("unsupported hashing_algorithm '{0}' (use rabbit_password_hashing_sha256 or _sha512)")]
    Algorithm(String),
    /// Not base64, or not salt plus a digest of the scheme's length.
    #[error("password_hash is not a {0} hash in RabbitMQ's format")]
    Malformed(&'static str),
    /// The operating system gave no random bytes for a salt.
    #[error("no random bytes for a salt: {0}")]
    Random(String),
}

impl Algorithm {
    /// The scheme RabbitMQ calls `name`.
    pub fn from_rabbit(name: &str) -> Result<Self, PasswordError> {
        match name {
            "rabbit_password_hashing_sha256" => Ok(Algorithm::Sha256),
            "rabbit_password_hashing_sha512" => Ok(Algorithm::Sha512),
            other => Err(PasswordError::Algorithm(other.chars().take(100).collect())),
        }
    }

    /// RabbitMQ's name for the scheme.
    pub fn rabbit_name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "rabbit_password_hashing_sha256",
            Algorithm::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
            Algorithm::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// A salted password hash; the password itself is never kept.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: Algorithm,
    /// Salt followed by digest, as RabbitMQ stores it (before base64).
    bytes: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHash")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str, algorithm: Algorithm) -> Result<Self, PasswordError> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
        let mut bytes = salt.to_vec();
        bytes.extend(algorithm.digest(&salt, password.as_bytes()));
        Ok(PasswordHash { algorithm, bytes })
    }

    /// Reads RabbitMQ's `password_hash` (base64) for `algorithm`.
    pub fn from_rabbit(encoded: &str, algorithm: Algorithm) -> Result<Self, PasswordError> {
        let malformed = PasswordError::Malformed(algorithm.rabbit_name());
        // Longer than any valid hash: refused before decoding.
        if encoded.len() > 128 {
            return Err(malformed);
        }
        let bytes = STANDARD.decode(encoded).map_err(|_| malformed.clone())?;
        if bytes.len() != SALT_LEN + algorithm.digest_len() {
            return Err(malformed);
        }
        Ok(PasswordHash { algorithm, bytes })
    }

    /// A hash that no password is expected to match (zero salt, digest of nothing), to
    /// spend the same time on a login for a user that does not exist.
    pub(crate) fn decoy() -> Self {
        let salt = [0u8; SALT_LEN];
        let mut bytes = salt.to_vec();
        bytes.extend(Algorithm::Sha256.digest(&salt, b"\0no user\0"));
        PasswordHash {
            algorithm: Algorithm::Sha256,
            bytes,
        }
    }

    /// RabbitMQ's `password_hash` (base64).
    pub fn to_rabbit(&self) -> String {
        STANDARD.encode(&self.bytes)
    }

    /// The scheme.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &str) -> bool {
        let (salt, digest) = self.bytes.split_at(SALT_LEN);
        let candidate = self.algorithm.digest(salt, password.as_bytes());
        candidate.ct_eq(digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let hash = PasswordHash::new("s3cret", algorithm).expect("hash");
            assert!(hash.verify("s3cret"));
            assert!(!hash.verify("s3cret "));
            assert!(!hash.verify(""));
            let again = PasswordHash::from_rabbit(&hash.to_rabbit(), algorithm).expect("decodes");
            assert_eq!(again, hash);
            let other = PasswordHash::new("s3cret", algorithm).expect("hash");
            assert_ne!(other.to_rabbit(), hash.to_rabbit(), "salted");
        }
    }

    #[test]
    fn rabbitmq_hashes_are_read_as_rabbitmq_writes_them() {
        // Built the way rabbit_password_hashing_sha256 builds it: base64(salt ++
        // sha256(salt ++ password)), here with salt 908DC60A and password "test12".
        let salt = [0x90, 0x8D, 0xC6, 0x0A];
        let mut bytes = salt.to_vec();
        bytes.extend(Sha256::digest([&salt[..], b"test12"].concat()));
        let encoded = STANDARD.encode(&bytes);
        let hash = PasswordHash::from_rabbit(&encoded, Algorithm::Sha256).expect("decodes");
        assert!(hash.verify("test12"));
        assert!(!hash.verify("test13"));
    }

    #[test]
    fn malformed_hashes_and_schemes_are_refused() {
        assert!(matches!(
            Algorithm::from_rabbit("rabbit_password_hashing_md5"),
            Err(PasswordError::Algorithm(_))
        ));
        for bad in ["", "not base64!", "AAAA", &"A".repeat(500)] {
            assert!(
                PasswordHash::from_rabbit(bad, Algorithm::Sha256).is_err(),
                "{bad}"
            );
        }
        let sha512 = PasswordHash::new("x", Algorithm::Sha512).expect("hash");
        assert!(PasswordHash::from_rabbit(&sha512.to_rabbit(), Algorithm::Sha256).is_err());
    }
}
