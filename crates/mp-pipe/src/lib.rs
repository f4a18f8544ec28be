//! Message pipes between processes: Python's `Pipe()` and `multiprocessing.connection`.
//!
//! A [`Connection`] sends whole messages — any [`mp_codec::Encode`] value, or raw bytes.
//! [`pipe`] connects our own processes through shared memory (a ring of frames per
//! direction, from `mp-queue`; see its docs); [`socket_pipe`] and the connections of
//! [`Listener`] and [`Client`] are sockets speaking CPython's wire format, so they can talk to
//! a Python process's `Connection` byte for byte. Over rings and unix sockets a message may
//! carry file descriptors. [`Listener`] and [`Client`] speak
//! CPython's authkey handshake (both the legacy HMAC-MD5 and the 3.12+ `{sha256}` form; either
//! side can refuse MD5, see [`Listener::set_legacy_md5`]), and [`wait`] waits on any mix of
//! connections, listeners and other descriptors.
//!
//! ```
//! let (a, b) = mp_pipe::pipe(true)?;
//! a.send_bytes(b"ping")?;
//! assert_eq!(b.recv_bytes()?, b"ping");
//! b.send(&("pong", 2u8))?;
//! assert_eq!(a.recv::<(String, u8)>()?, ("pong".to_string(), 2));
//! # Ok::<(), mp_pipe::Error>(())
//! ```
#![deny(missing_docs, unsafe_code)]

mod address;
mod auth;
mod conn;
mod error;
mod listener;
mod ring;
mod sys;
mod wait;

pub use crate::{
    address::{Address, ToAddress},
    conn::{Connection, pipe, socket_pipe},
    error::{Error, Result},
    listener::{Client, DEFAULT_HANDSHAKE_TIMEOUT, Listener, answer_challenge, deliver_challenge},
    wait::wait,
};
