//! Shared-key handshake (forward protocol v1 "secure forward"): HELO → PING → PONG.
//!
//! Only the shared key is implemented; user/password auth is not offered (HELO sends an
//! empty `auth` salt, so clients send empty credentials).

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha512};

use super::decode::Plain;

/// `lowercase_hex(sha512(salt + hostname + nonce + shared_key))`, the digest both sides send.
pub(crate) fn digest(salt: &[u8], hostname: &[u8], nonce: &[u8], shared_key: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(shared_key);
    hex::encode(h.finalize())
}

/// A fresh 16-byte nonce. Fluent Bit sends 16 random bytes as a msgpack str; we draw them
/// from the alphanumeric alphabet (~95 bits) so clients that insist on UTF-8 strings cope.
pub(crate) fn new_nonce() -> Vec<u8> {
    rand::rng().sample_iter(Alphanumeric).take(16).collect()
}

/// `["HELO", {"nonce": nonce, "auth": "", "keepalive": true}]`
pub(crate) fn helo(nonce: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    rmp::encode::write_array_len(&mut b, 2).ok();
    rmp::encode::write_str(&mut b, "HELO").ok();
    rmp::encode::write_map_len(&mut b, 3).ok();
    rmp::encode::write_str(&mut b, "nonce").ok();
    write_str_bytes(&mut b, nonce);
    rmp::encode::write_str(&mut b, "auth").ok();
    rmp::encode::write_str(&mut b, "").ok();
    rmp::encode::write_str(&mut b, "keepalive").ok();
    rmp::encode::write_bool(&mut b, true).ok();
    b
}

/// Outcome of checking a PING: the PONG to send, and whether the client may continue.
pub(crate) struct Verdict {
    pub pong: Vec<u8>,
    /// `None` when authenticated, else the reason sent in the PONG.
    pub failure: Option<String>,
}

/// Checks `["PING", hostname, salt, digest, username, password]` (six strings) against the
/// nonce and key and builds the PONG.
pub(crate) fn check_ping(
    frame: &[u8],
    nonce: &[u8],
    shared_key: &[u8],
    server_hostname: &str,
) -> Verdict {
    let fail = |reason: &str| Verdict {
        pong: pong(false, reason, "", ""),
        failure: Some(reason.to_owned()),
    };
    let Ok(Plain::Array(items)) = Plain::parse(frame) else {
        return fail("PING is not an array");
    };
    let strs: Option<Vec<&[u8]>> = items.iter().map(Plain::as_str).collect();
    let Some(fields) = strs.filter(|f| f.len() == 6) else {
        return fail("PING must be an array of 6 strings");
    };
    if fields[0] != b"PING" {
        return fail("expected PING");
    }
    let (hostname, salt, client_digest) = (fields[1], fields[2], fields[3]);
    let expected = digest(salt, hostname, nonce, shared_key);
    if !constant_time_eq(expected.as_bytes(), client_digest) {
        return fail("shared_key mismatch");
    }
    let server_digest = digest(salt, server_hostname.as_bytes(), nonce, shared_key);
    Verdict {
        pong: pong(true, "", server_hostname, &server_digest),
        failure: None,
    }
}

/// `["PONG", ok, reason, server_hostname, digest]`
pub(crate) fn pong(ok: bool, reason: &str, hostname: &str, digest: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(200);
    rmp::encode::write_array_len(&mut b, 5).ok();
    rmp::encode::write_str(&mut b, "PONG").ok();
    rmp::encode::write_bool(&mut b, ok).ok();
    rmp::encode::write_str(&mut b, reason).ok();
    rmp::encode::write_str(&mut b, hostname).ok();
    rmp::encode::write_str(&mut b, digest).ok();
    b
}

/// Client side: builds the PING answering `helo` (used by the load generator and tests).
/// Returns the PING and the nonce, which [`verify_pong`] needs.
pub(crate) fn client_ping(
    helo: &[u8],
    client_hostname: &str,
    salt: &[u8],
    shared_key: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let msg = Plain::parse(helo).map_err(|e| format!("HELO: {e}"))?;
    let Plain::Array(items) = &msg else {
        return Err("HELO is not an array".into());
    };
    if items.len() != 2 || items[0].as_str() != Some(b"HELO") {
        return Err("expected [\"HELO\", options]".into());
    }
    let nonce = match items[1].get("nonce") {
        Some(Plain::Str(n)) | Some(Plain::Bin(n)) => n.clone(),
        _ => return Err("HELO has no nonce".into()),
    };
    let d = digest(salt, client_hostname.as_bytes(), &nonce, shared_key);
    let mut b = Vec::with_capacity(256);
    rmp::encode::write_array_len(&mut b, 6).ok();
    rmp::encode::write_str(&mut b, "PING").ok();
    rmp::encode::write_str(&mut b, client_hostname).ok();
    write_str_bytes(&mut b, salt);
    rmp::encode::write_str(&mut b, &d).ok();
    rmp::encode::write_str(&mut b, "").ok();
    rmp::encode::write_str(&mut b, "").ok();
    Ok((b, nonce))
}

/// Client side: checks the PONG, including the server's digest.
pub(crate) fn verify_pong(
    pong: &[u8],
    salt: &[u8],
    nonce: &[u8],
    shared_key: &[u8],
) -> Result<(), String> {
    let msg = Plain::parse(pong).map_err(|e| format!("PONG: {e}"))?;
    let Plain::Array(items) = &msg else {
        return Err("PONG is not an array".into());
    };
    if items.len() != 5 || items[0].as_str() != Some(b"PONG") {
        return Err("expected a 5-element PONG".into());
    }
    if items[1] != Plain::Bool(true) {
        let reason = items[2]
            .as_str()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return Err(format!("authentication refused: {reason}"));
    }
    let host = items[3].as_str().unwrap_or_default();
    let expected = digest(salt, host, nonce, shared_key);
    if items[4].as_str() != Some(expected.as_bytes()) {
        return Err("server digest mismatch".into());
    }
    Ok(())
}

fn write_str_bytes(b: &mut Vec<u8>, s: &[u8]) {
    rmp::encode::write_str_len(b, s.len() as u32).ok();
    b.extend_from_slice(s);
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_fixed_vector() {
        // Computed independently: printf 'saltclient-hostnonce0123456789abkey' | sha512sum
        assert_eq!(
            digest(b"salt", b"client-host", b"nonce0123456789ab", b"key"),
            FIXED_VECTOR
        );
    }

    const FIXED_VECTOR: &str = "e806f285568404e364f74066ea0fad01be28c9c38c4b2bc7f26c4847ca6b0ada77aed2e43d1de36cb30d862cc0d3ece8f8f851cc010b49347f1ea441de5a805d";

    #[test]
    fn full_exchange_succeeds_with_the_right_key() {
        let nonce = new_nonce();
        assert_eq!(nonce.len(), 16);
        let (ping, seen_nonce) =
            client_ping(&helo(&nonce), "app-host", b"s4lt", b"secret").unwrap();
        assert_eq!(seen_nonce, nonce);
        let verdict = check_ping(&ping, &nonce, b"secret", "router");
        assert_eq!(verdict.failure, None);
        verify_pong(&verdict.pong, b"s4lt", &nonce, b"secret").unwrap();
    }

    #[test]
    fn wrong_key_gets_pong_false() {
        let nonce = new_nonce();
        let (ping, _) = client_ping(&helo(&nonce), "app-host", b"s4lt", b"wrong").unwrap();
        let verdict = check_ping(&ping, &nonce, b"secret", "router");
        assert_eq!(verdict.failure.as_deref(), Some("shared_key mismatch"));
        let err = verify_pong(&verdict.pong, b"s4lt", &nonce, b"wrong").unwrap_err();
        assert!(err.contains("shared_key mismatch"), "{err}");
    }

    #[test]
    fn malformed_pings_are_refused() {
        let nonce = new_nonce();
        let mut five = Vec::new();
        rmp::encode::write_array_len(&mut five, 5).unwrap();
        for _ in 0..5 {
            rmp::encode::write_str(&mut five, "PING").unwrap();
        }
        let mut not_str = Vec::new();
        rmp::encode::write_array_len(&mut not_str, 6).unwrap();
        rmp::encode::write_str(&mut not_str, "PING").unwrap();
        for _ in 0..5 {
            rmp::encode::write_uint(&mut not_str, 1).unwrap();
        }
        for frame in [five, not_str, vec![0xc1], vec![0x90]] {
            assert!(
                check_ping(&frame, &nonce, b"k", "h").failure.is_some(),
                "{frame:02x?}"
            );
        }
    }
}
