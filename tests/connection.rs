//! Interop with CPython's `multiprocessing.connection`, run with python3: our echo server
//! with their `Client`, their `Listener` with our echo client, with the right key and a
//! wrong one, over unix sockets and TCP, in CPython's own handshake (legacy HMAC-MD5 on a
//! 3.11) and in the 3.12+ `{sha256}` form; and each of ours set to refuse the legacy form.

use std::process::Command;

use crate::support::{Guarded, example, python_script};

const N: usize = 26; // one whole cycle of sizes, 0 to 4 MiB, and a bit

/// A unix socket path for this test run, removed when dropped: the servers are killed (and
/// their `Listener` never drops), so the test removes the file, after the server is gone.
/// Declare it before the server, so that the server drops first.
struct SocketPath(String);

impl std::ops::Deref for SocketPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            // Their Listener removes its own socket when it closes; so may a server never bound.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The leftovers check of `.ci/run` reports the file if this fails mid-panic.
            Err(e) if !std::thread::panicking() => panic!("cannot remove {}: {e}", self.0),
            Err(_) => {}
        }
    }
}

fn unique_path(tag: &str) -> SocketPath {
    SocketPath(
        std::env::temp_dir()
            .join(format!("mp-interop-{}-{tag}.sock", std::process::id()))
            .display()
            .to_string(),
    )
}

/// A server that has said `listening on ADDRESS`, and that address.
fn listening(mut server: Guarded) -> (Guarded, String) {
    let line = server.first_line();
    let bound = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (server, bound)
}

fn our_server(address: &str, key: Option<&str>) -> (Guarded, String) {
    let mut cmd = Command::new(example("echo_server"));
    cmd.arg(address);
    set_key(&mut cmd, key);
    listening(Guarded::spawn(cmd))
}

fn their_server(address: &str, key: &str, modern: bool) -> (Guarded, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(python_script("connection_peer.py"))
        .args(["server", address]);
    if modern {
        cmd.arg("--modern");
    }
    set_key(&mut cmd, Some(key));
    listening(Guarded::spawn(cmd))
}

fn our_client(address: &str, key: Option<&str>) -> Guarded {
    let mut cmd = Command::new(example("echo_client"));
    cmd.args([address, &N.to_string()]);
    set_key(&mut cmd, key);
    Guarded::spawn(cmd)
}

fn their_client(address: &str, key: &str, modern: bool) -> Guarded {
    let mut cmd = Command::new("python3");
    cmd.arg(python_script("connection_peer.py"))
        .args(["client", address, &N.to_string()]);
    if modern {
        cmd.arg("--modern");
    }
    set_key(&mut cmd, Some(key));
    Guarded::spawn(cmd)
}

fn set_key(cmd: &mut Command, key: Option<&str>) {
    match key {
        Some(key) => cmd.env("MP_AUTHKEY", key),
        None => cmd.env_remove("MP_AUTHKEY"),
    };
}

fn assert_ok(client: Guarded) {
    let (status, out, err) = client.finish();
    assert!(status.success(), "client failed: {status}\n{out}\n{err}");
    assert_eq!(out.trim(), format!("ok {N}"));
}

#[test]
fn their_client_talks_to_our_server_over_unix_and_tcp() {
    let socket = unique_path("ours-legacy");
    for address in [&*socket, "127.0.0.1:0"] {
        let (_server, bound) = our_server(address, Some("s3cret"));
        assert_ok(their_client(&bound, "s3cret", false));
        // The server serves the next client too.
        assert_ok(their_client(&bound, "s3cret", false));
    }
}

#[test]
fn their_modern_client_talks_to_our_server() {
    let (_server, bound) = our_server("127.0.0.1:0", Some("s3cret"));
    assert_ok(their_client(&bound, "s3cret", true));
}

#[test]
fn our_client_talks_to_their_listener_over_unix_and_tcp() {
    let socket = unique_path("theirs-legacy");
    for address in [&*socket, "127.0.0.1:0"] {
        let (server, bound) = their_server(address, "s3cret", false);
        assert_ok(our_client(&bound, Some("s3cret")));
        let (status, out, err) = server.finish();
        assert!(status.success(), "their server: {status}\n{err}");
        assert!(out.contains(&format!("served {N}")), "{out}");
    }
}

#[test]
fn our_client_talks_to_their_modern_listener() {
    let (server, bound) = their_server("127.0.0.1:0", "s3cret", true);
    assert_ok(our_client(&bound, Some("s3cret")));
    assert!(server.finish().0.success());
}

#[test]
fn a_wrong_key_fails_on_both_sides_against_their_client() {
    let (_server, bound) = our_server("127.0.0.1:0", Some("right"));
    let (status, _, err) = their_client(&bound, "wrong", false).finish();
    assert_eq!(status.code(), Some(3), "{err}");
    let (status, _, err) = their_client(&bound, "wrong", true).finish();
    assert_eq!(status.code(), Some(3), "{err}");
    // Our server refused both, said so, and still serves a client with the right key.
    assert_ok(their_client(&bound, "right", false));
}

#[test]
fn a_wrong_key_fails_on_both_sides_against_their_listener() {
    for modern in [false, true] {
        let (server, bound) = their_server("127.0.0.1:0", "right", modern);
        let (status, _, err) = our_client(&bound, Some("wrong")).finish();
        assert!(!status.success());
        assert!(err.contains("authentication failed"), "{err}");
        let (status, _, err) = server.finish();
        assert_eq!(status.code(), Some(3), "{err}");
    }
}

#[test]
fn no_key_on_both_sides_needs_no_handshake() {
    let socket = unique_path("nokey");
    let (_server, bound) = our_server(&socket, None);
    assert_ok(our_client(&bound, None));
}

/// `cmd` with `MP_REFUSE_MD5` set: our side refuses the legacy HMAC-MD5 handshake.
fn refusing_md5(mut cmd: Command) -> Command {
    cmd.env("MP_REFUSE_MD5", "1");
    cmd
}

#[test]
fn our_server_refusing_md5_refuses_their_legacy_client_and_serves_a_modern_one() {
    let mut cmd = Command::new(example("echo_server"));
    cmd.arg("127.0.0.1:0");
    set_key(&mut cmd, Some("s3cret"));
    let (_server, bound) = listening(Guarded::spawn(refusing_md5(cmd)));
    let (status, _, err) = their_client(&bound, "s3cret", false).finish();
    assert_eq!(status.code(), Some(3), "{err}");
    assert_ok(their_client(&bound, "s3cret", true));
}

#[test]
fn our_client_refusing_md5_refuses_their_legacy_listener_and_talks_to_a_modern_one() {
    let client = |bound: &str| {
        let mut cmd = Command::new(example("echo_client"));
        cmd.args([bound, &N.to_string()]);
        set_key(&mut cmd, Some("s3cret"));
        Guarded::spawn(refusing_md5(cmd))
    };
    let (server, bound) = their_server("127.0.0.1:0", "s3cret", false);
    let (status, _, err) = client(&bound).finish();
    assert!(!status.success());
    assert!(err.contains("HMAC-MD5"), "{err}");
    // Their legacy listener sees the connection close instead of an answer.
    assert!(!server.finish().0.success());

    let (server, bound) = their_server("127.0.0.1:0", "s3cret", true);
    assert_ok(client(&bound));
    assert!(server.finish().0.success());
}

#[test]
fn a_killed_server_leaves_no_socket_file_behind() {
    let bound = {
        let socket = unique_path("left-behind");
        let (_server, bound) = our_server(&socket, None);
        assert_ok(our_client(&bound, None));
        bound
    };
    assert!(
        !std::path::Path::new(&bound).exists(),
        "{bound} outlived its test"
    );
}
