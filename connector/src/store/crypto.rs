//! Session material at rest: ChaCha20-Poly1305 with a 32-byte key from a Secret,
//! a fresh random nonce per write, and the account key as associated data (a
//! row copied to another account does not decrypt).

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// A session key.
#[derive(Clone)]
pub struct SessionKey(Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// Parses a key given as 64 hex digits or standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok().filter(|b| b.len() == 32))
            .ok_or("the session key must be 32 bytes, as 64 hex digits or base64")?;
        Ok(Self(*Key::from_slice(&bytes)))
    }

    /// A new random key, and its text form (64 hex digits) for [`SessionKey::parse`].
    pub fn generate() -> (Self, String) {
        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
        (Self(key), hex::encode(key))
    }

    /// Encrypts `plain` for `account`: `(nonce, ciphertext)`.
    pub fn seal(&self, account: &str, plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher.encrypt(&nonce, Payload { msg: plain, aad: account.as_bytes() }).map_err(|e| e.to_string())?;
        Ok((nonce.to_vec(), ct))
    }

    /// Decrypts what [`SessionKey::seal`] produced for `account`.
    pub fn open(&self, account: &str, nonce: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, String> {
        if nonce.len() != 12 {
            return Err("stored session has a malformed nonce".into());
        }
        let cipher = ChaCha20Poly1305::new(&self.0);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: account.as_bytes() })
            .map_err(|_| "stored session does not decrypt with this key (wrong key, or not this account's row)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_account_and_key() {
        let key = SessionKey::parse(&"11".repeat(32)).unwrap();
        let (nonce, ct) = key.seal("ns/a", b"auth key bytes").unwrap();
        assert!(!ct.windows(4).any(|w| w == b"auth"), "ciphertext must not contain the plaintext");
        assert_eq!(key.open("ns/a", &nonce, &ct).unwrap(), b"auth key bytes");
        assert!(key.open("ns/b", &nonce, &ct).is_err());
        let other = SessionKey::parse(&"22".repeat(32)).unwrap();
        assert!(other.open("ns/a", &nonce, &ct).is_err());
        assert!(SessionKey::parse("short").is_err());
        assert!(!format!("{key:?}").contains("11"));
    }
}
