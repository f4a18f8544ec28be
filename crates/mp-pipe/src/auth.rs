//! CPython's connection authentication: a mutual HMAC challenge/response.
//!
//! Each side proves it knows the authkey by answering the other's challenge. The modern form
//! (CPython 3.12+) challenges with `#CHALLENGE#{sha256}` and 40 random bytes and is answered
//! with `{sha256}` and the HMAC-SHA256 of the whole challenge (prefix included). The legacy
//! form (3.11 and older) challenges with 20 random bytes and is answered with a bare 16-byte
//! HMAC-MD5. Like CPython we tell them apart by length, so either side can be either version.
//!
//! Either side may refuse MD5 altogether (`md5: false`): then a bare or `{md5}` answer to our
//! challenge fails as a wrong digest would, and a legacy or `{md5}` challenge from the peer is
//! refused before we answer it. The default accepts it, as CPython 3.12 does, so 3.11 and
//! older peers can connect.

use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Sha256, Sha384};

use crate::{Connection, Error, Result};

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in our challenge (CPython's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// A legacy challenge, and a legacy answer: lengths CPython treats as "no digest prefix".
const LEGACY_LENGTHS: [usize; 2] = [20, 16];
/// Every handshake read is capped, as in CPython.
const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// The digest names CPython accepts, and the longest of them.
const ALLOWED: [&[u8]; 5] = [b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"];
const MAX_DIGEST_NAME: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Digest {
    Md5,
    Sha256,
    Sha384,
}

impl Digest {
    fn name(self) -> &'static [u8] {
        match self {
            Digest::Md5 => b"md5",
            Digest::Sha256 => b"sha256",
            Digest::Sha384 => b"sha384",
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Box<dyn MacOf> {
        match self {
            Digest::Md5 => Box::new(keyed::<Hmac<Md5>>(key, message)),
            Digest::Sha256 => Box::new(keyed::<Hmac<Sha256>>(key, message)),
            Digest::Sha384 => Box::new(keyed::<Hmac<Sha384>>(key, message)),
        }
    }
}

/// An HMAC that has absorbed its message, of whichever digest.
trait MacOf {
    fn bytes(self: Box<Self>) -> Vec<u8>;
    /// Constant-time comparison with `tag`.
    fn matches(self: Box<Self>, tag: &[u8]) -> bool;
}

impl<M: Mac> MacOf for M {
    fn bytes(self: Box<Self>) -> Vec<u8> {
        self.finalize().into_bytes().to_vec()
    }

    fn matches(self: Box<Self>, tag: &[u8]) -> bool {
        self.verify_slice(tag).is_ok()
    }
}

fn keyed<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> M {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac
}

fn refused(why: impl Into<String>) -> Error {
    Error::Authentication(why.into())
}

/// The digest a challenge or answer names, and the MAC or random bytes after its prefix;
/// `None` for the legacy, unprefixed form.
fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8])> {
    if LEGACY_LENGTHS.contains(&message.len()) {
        return Ok((None, message));
    }
    let close = message
        .iter()
        .take(MAX_DIGEST_NAME + 2)
        .position(|&b| b == b'}');
    if let (Some(b'{'), Some(close)) = (message.first(), close) {
        let name = &message[1..close];
        let payload = &message[close + 1..];
        let digest = match name {
            b"md5" => Some(Digest::Md5),
            b"sha256" => Some(Digest::Sha256),
            b"sha384" => Some(Digest::Sha384),
            _ => None,
        };
        if let Some(digest) = digest {
            return Ok((Some(digest), payload));
        }
        if ALLOWED.contains(&name) {
            return Err(refused(format!(
                "digest {} is not supported here",
                String::from_utf8_lossy(name)
            )));
        }
    }
    Err(refused(
        "unsupported message length, missing digest prefix, or unsupported digest",
    ))
}

/// The error for a peer that would have us use MD5 when we refuse it.
fn md5_refused(what: &str) -> Error {
    refused(format!(
        "the peer's {what} uses the legacy HMAC-MD5 handshake, which this side refuses"
    ))
}

/// Our answer to `challenge` (the bytes after `#CHALLENGE#`); `md5`: whether a legacy or
/// `{md5}` challenge may be answered.
fn response(key: &[u8], challenge: &[u8], md5: bool) -> Result<Vec<u8>> {
    let digest = digest_and_payload(challenge)?.0;
    if !md5 && matches!(digest, None | Some(Digest::Md5)) {
        return Err(md5_refused("challenge"));
    }
    Ok(match digest {
        None => Digest::Md5.mac(key, challenge).bytes(),
        Some(digest) => {
            let mut out = Vec::with_capacity(MAX_DIGEST_NAME + 2 + 48);
            out.push(b'{');
            out.extend_from_slice(digest.name());
            out.push(b'}');
            out.extend(digest.mac(key, challenge).bytes());
            out
        }
    })
}

/// Checks the peer's `answer` to our `challenge`. An unprefixed answer is legacy HMAC-MD5;
/// a prefixed one may use any supported digest, and the prefix we sent is covered by the MAC,
/// so no downgrade is possible. `md5`: whether an MD5 answer (bare or prefixed) may pass.
fn verify(key: &[u8], challenge: &[u8], answer: &[u8], md5: bool) -> Result<()> {
    let (digest, mac) = digest_and_payload(answer)?;
    if !md5 && matches!(digest, None | Some(Digest::Md5)) {
        return Err(md5_refused("answer"));
    }
    if digest
        .unwrap_or(Digest::Md5)
        .mac(key, challenge)
        .matches(mac)
    {
        Ok(())
    } else {
        Err(refused("digest received was wrong"))
    }
}

/// Reads one handshake message by `deadline`, which bounds the whole message (a peer that
/// drips a byte at a time cannot stretch it); its failures are authentication failures.
fn recv(conn: &Connection, deadline: Instant) -> Result<Vec<u8>> {
    if let Some(got) = conn.ring_recv_by(deadline, MAX_HANDSHAKE_MESSAGE) {
        return match got {
            Ok(message) => Ok(message),
            Err(Error::BadMessageLength { len, .. }) => Err(refused(format!(
                "handshake message length {len} is out of range"
            ))),
            Err(Error::Eof) => Err(refused("peer closed the connection during the handshake")),
            Err(e) if is_timeout(&e) => Err(Error::HandshakeTimeout),
            Err(e) => Err(e),
        };
    }
    let mut head = [0u8; 4];
    read_by(conn, &mut head, deadline)?;
    let len = i32::from_be_bytes(head);
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_HANDSHAKE_MESSAGE)
        .ok_or_else(|| refused(format!("handshake message length {len} is out of range")))?;
    let mut message = vec![0; len];
    read_by(conn, &mut message, deadline)?;
    Ok(message)
}

fn read_by(conn: &Connection, buf: &mut [u8], deadline: Instant) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || crate::wait(&[conn], Some(left))?.is_empty() {
            return Err(Error::HandshakeTimeout);
        }
        match rustix::io::read(conn, &mut buf[got..]) {
            Ok(0) => return Err(refused("peer closed the connection during the handshake")),
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(Error::os("read", e)),
        }
    }
    Ok(())
}

fn send(conn: &Connection, bytes: &[u8]) -> Result<()> {
    conn.send_bytes(bytes).map_err(|e| {
        if is_timeout(&e) {
            Error::HandshakeTimeout
        } else if e.is_disconnect() {
            refused("peer closed the connection during the handshake")
        } else {
            e
        }
    })
}

fn is_timeout(err: &Error) -> bool {
    err.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error())
}

/// Challenges the peer to prove it knows `key` (CPython's `deliver_challenge`); `md5`:
/// whether a legacy HMAC-MD5 answer is accepted.
pub(crate) fn deliver_challenge(
    conn: &Connection,
    key: &[u8],
    deadline: Instant,
    md5: bool,
) -> Result<()> {
    let mut challenge = b"{sha256}".to_vec();
    let mut random = [0; MESSAGE_LENGTH];
    crate::sys::random(&mut random)?;
    challenge.extend_from_slice(&random);
    send(conn, &[CHALLENGE, &challenge].concat())?;
    let answer = recv(conn, deadline)?;
    match verify(key, &challenge, &answer, md5) {
        Ok(()) => send(conn, WELCOME),
        Err(err) => {
            let _ = conn.send_bytes(FAILURE); // best effort: the peer may already be gone
            Err(err)
        }
    }
}

/// Answers the peer's challenge (CPython's `answer_challenge`); `md5`: whether a legacy
/// (or `{md5}`) challenge is answered.
pub(crate) fn answer_challenge(
    conn: &Connection,
    key: &[u8],
    deadline: Instant,
    md5: bool,
) -> Result<()> {
    let message = recv(conn, deadline)?;
    let Some(challenge) = message.strip_prefix(CHALLENGE) else {
        return Err(refused("protocol error: expected a challenge"));
    };
    if challenge.len() < LEGACY_LENGTHS[0] {
        return Err(refused(format!(
            "challenge too short: {} bytes",
            challenge.len()
        )));
    }
    send(conn, &response(key, challenge, md5)?)?;
    if recv(conn, deadline)? == WELCOME {
        Ok(())
    } else {
        Err(refused("digest sent was rejected"))
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use std::time::Duration;

    use super::*;

    fn handshake(server_key: &'static [u8], client_key: &'static [u8]) -> (Result<()>, Result<()>) {
        let (s, c) = crate::socket_pipe(true).unwrap();
        let soon = || Instant::now() + Duration::from_secs(30);
        let server = thread::spawn(move || {
            deliver_challenge(&s, server_key, soon(), true)?;
            answer_challenge(&s, server_key, soon(), true)
        });
        let client = answer_challenge(&c, client_key, soon(), true)
            .and_then(|()| deliver_challenge(&c, client_key, soon(), true));
        (server.join().unwrap(), client)
    }

    #[test]
    fn same_key_is_welcome_both_ways() {
        let (s, c) = handshake(b"secret", b"secret");
        s.unwrap();
        c.unwrap();
    }

    #[test]
    fn wrong_key_fails_on_both_sides() {
        let (s, c) = handshake(b"secret", b"guess");
        assert!(matches!(s, Err(Error::Authentication(_))), "{s:?}");
        assert!(matches!(c, Err(Error::Authentication(_))), "{c:?}");
    }

    #[test]
    fn a_legacy_challenge_gets_a_bare_md5_answer() {
        let challenge = [7u8; 20];
        let answer = response(b"k", &challenge, true).unwrap();
        assert_eq!(answer.len(), 16);
        verify(b"k", &challenge, &answer, true).unwrap();
    }

    #[test]
    fn a_modern_answer_is_prefixed_and_covers_the_prefix() {
        let challenge = [b"{sha256}".as_slice(), &[1; 40]].concat();
        let answer = response(b"k", &challenge, true).unwrap();
        assert!(answer.starts_with(b"{sha256}"));
        assert_eq!(answer.len(), 8 + 32);
        verify(b"k", &challenge, &answer, true).unwrap();
        // a legacy (MD5) answer to a modern challenge is still accepted, as CPython does
        let md5 = Digest::Md5.mac(b"k", &challenge).bytes();
        verify(b"k", &challenge, &md5, true).unwrap();
        assert!(verify(b"k", &challenge[1..], &answer, true).is_err());
    }

    #[test]
    fn refusing_md5_refuses_every_md5_answer_and_challenge_but_not_sha256() {
        let challenge = [b"{sha256}".as_slice(), &[1; 40]].concat();
        let bare = Digest::Md5.mac(b"k", &challenge).bytes();
        let prefixed = [b"{md5}".as_slice(), &bare].concat();
        verify(b"k", &challenge, &prefixed, true).unwrap();
        for answer in [&bare, &prefixed] {
            let err = verify(b"k", &challenge, answer, false).unwrap_err();
            assert!(err.to_string().contains("HMAC-MD5"), "{err}");
        }
        let sha256 = response(b"k", &challenge, false).unwrap();
        verify(b"k", &challenge, &sha256, false).unwrap();

        let legacy_challenge = [7u8; 20];
        let md5_challenge = [b"{md5}".as_slice(), &[7; 40]].concat();
        for challenge in [&legacy_challenge[..], &md5_challenge] {
            assert!(response(b"k", challenge, true).is_ok());
            let err = response(b"k", challenge, false).unwrap_err();
            assert!(err.to_string().contains("HMAC-MD5"), "{err}");
        }
    }

    #[test]
    fn unknown_or_malformed_prefixes_are_refused() {
        for answer in [
            &b"{sha3_256}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..],
            b"{nope}abc",
            b"abc",
        ] {
            assert!(matches!(
                verify(b"k", b"whatever", answer, true),
                Err(Error::Authentication(_))
            ));
        }
    }

    #[test]
    fn an_oversized_handshake_message_is_refused() {
        let (s, c) = crate::socket_pipe(true).unwrap();
        s.send_bytes(&[b'#'; 300]).unwrap();
        let soon = Instant::now() + Duration::from_secs(30);
        assert!(matches!(
            answer_challenge(&c, b"k", soon, true),
            Err(Error::Authentication(_))
        ));
    }

    #[test]
    fn a_peer_dripping_bytes_cannot_stretch_the_deadline() {
        let (s, c) = crate::socket_pipe(true).unwrap();
        // A header promising 10 bytes, then one byte every 20 ms: each read alone would be
        // quick, but the message as a whole misses its 100 ms deadline.
        let dripper = thread::spawn(move || {
            rustix::io::write(&s, &[0, 0, 0, 10]).unwrap();
            for b in 0..10u8 {
                std::thread::sleep(Duration::from_millis(20));
                if rustix::io::write(&s, &[b]).is_err() {
                    return;
                }
            }
        });
        let result = recv(&c, Instant::now() + Duration::from_millis(100));
        assert!(matches!(result, Err(Error::HandshakeTimeout)), "{result:?}");
        drop(c);
        dripper.join().unwrap();
    }
}
