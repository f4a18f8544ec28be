//! Serves clients one after another, echoing every message until the client closes.
//!
//! `cargo run --example echo_server -- ADDRESS`, where ADDRESS is a unix socket path or
//! `host:port`; the authkey is the UTF-8 bytes of `MP_AUTHKEY` (unset: no authentication),
//! and `MP_REFUSE_MD5=1` refuses CPython 3.11's legacy HMAC-MD5 handshake.
//! Prints `listening on ADDRESS` once ready. CPython's `multiprocessing.connection.Client`
//! can be the client.

use std::io::Write;

use multiprocessing::connection::Listener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .ok_or("usage: echo_server ADDRESS")?;
    let authkey = std::env::var("MP_AUTHKEY").ok();
    let mut listener = Listener::bind(address.as_str(), authkey.as_deref().map(str::as_bytes))?;
    listener.set_legacy_md5(std::env::var_os("MP_REFUSE_MD5").is_none());
    println!("listening on {}", listener.address());
    std::io::stdout().flush()?;
    loop {
        let conn = match listener.accept() {
            Ok(conn) => conn,
            Err(err) => {
                eprintln!("echo_server: refused a client: {err}");
                continue;
            }
        };
        loop {
            match conn.recv_bytes() {
                Ok(message) => conn.send_bytes(&message)?,
                Err(err) if err.is_disconnect() => break,
                Err(err) => {
                    eprintln!("echo_server: {err}");
                    break;
                }
            }
        }
    }
}
