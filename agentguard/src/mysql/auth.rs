//! Credential injection for MySQL / MariaDB: the guard logs in to the
//! server as the credential's role with its stored secret, answering the
//! server's auth plugin itself, and the agent (which never held the
//! password) gets the server's OK. Plugins: `mysql_native_password`,
//! `caching_sha2_password` (fast path; the full path over the guard's TLS
//! to the server), and `mysql_clear_password` over TLS only.

use sha1::Sha1;
use sha2::{Digest as _, Sha256};

pub const NATIVE: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";
pub const CLEAR: &str = "mysql_clear_password";

/// What the plugin sends first for `secret` and the server's nonce, or
/// `None` for a plugin the guard cannot answer with a stored password.
pub fn scramble(plugin: &str, secret: &str, nonce: &[u8], tls: bool) -> Option<Vec<u8>> {
    let nonce = nonce.get(..20).unwrap_or(nonce);
    match plugin {
        NATIVE => Some(native(secret.as_bytes(), nonce)),
        CACHING_SHA2 => Some(caching_sha2(secret.as_bytes(), nonce)),
        // The password in the clear: never over a plaintext hop.
        CLEAR if tls => {
            let mut v = secret.as_bytes().to_vec();
            v.push(0);
            Some(v)
        }
        _ => None,
    }
}

/// SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))).
fn native(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let h1 = Sha1::digest(password);
    let h2 = Sha1::digest(h1);
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(h2);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

/// SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce).
fn caching_sha2(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let h1 = Sha256::digest(password);
    let h2 = Sha256::digest(h1);
    let mut h = Sha256::new();
    h.update(h2);
    h.update(nonce);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_matches_the_servers_check() {
        // The server stores SHA1(SHA1(pw)) and checks
        // SHA1(reply XOR SHA1(nonce + stored)) == stored.
        let (pw, nonce) = (b"s3cret".as_slice(), [7u8; 20]);
        let reply = native(pw, &nonce);
        let stored = Sha1::digest(Sha1::digest(pw));
        let mut h = Sha1::new();
        h.update(nonce);
        h.update(stored);
        let mask = h.finalize();
        let h1: Vec<u8> = reply.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(Sha1::digest(&h1), stored);
    }

    #[test]
    fn clear_password_needs_tls() {
        assert!(scramble(CLEAR, "pw", &[0; 20], false).is_none());
        assert_eq!(
            scramble(CLEAR, "pw", &[0; 20], true),
            Some(b"pw\0".to_vec())
        );
        assert!(scramble("client_ed25519", "pw", &[0; 20], true).is_none());
    }
}
