//! Sends N messages to an echo server and checks every echo byte for byte.
//!
//! `cargo run --example echo_client -- ADDRESS N`: message sizes cycle through 0, 1, 2, 4, …
//! up to 4 MiB; the authkey is the UTF-8 bytes of `MP_AUTHKEY` (unset: none), and
//! `MP_REFUSE_MD5=1` refuses a listener's legacy HMAC-MD5 handshake. Prints `ok N`,
//! or exits non-zero with the error. CPython's `multiprocessing.connection.Listener` can be
//! the server.

use multiprocessing::connection::Client;

/// 0, then 1, 2, 4, … 4 MiB.
fn size(i: usize) -> usize {
    let cycle = 24; // 0 and the 23 powers of two up to 1 << 22
    match i % cycle {
        0 => 0,
        k => 1 << (k - 1),
    }
}

fn main() {
    if let Err(err) = run() {
        eprintln!("echo_client: {err}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(n)) = (args.next(), args.next()) else {
        return Err("usage: echo_client ADDRESS N".into());
    };
    let n: usize = n.parse()?;
    let authkey = std::env::var("MP_AUTHKEY").ok();
    let conn = Client::new()
        .legacy_md5(std::env::var_os("MP_REFUSE_MD5").is_none())
        .open(address.as_str(), authkey.as_deref().map(str::as_bytes))?;
    for i in 0..n {
        let message: Vec<u8> = (0..size(i)).map(|j| (i * 31 + j * 7) as u8).collect();
        conn.send_bytes(&message)?;
        let echo = conn.recv_bytes()?;
        if echo != message {
            return Err(format!(
                "echo {i} differs: sent {} bytes, got {} bytes",
                message.len(),
                echo.len()
            )
            .into());
        }
    }
    println!("ok {n}");
    Ok(())
}
