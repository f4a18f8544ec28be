//! What crosses a process boundary: the [`Message`] trait, [`Frame`]s and their fd side channel.
//!
//! A message is encoded into a [`Frame`] — payload bytes plus the file descriptors the value
//! owns — and travels over a socket or pipe in CPython's `multiprocessing.connection` framing
//! (a 4-byte big-endian length, or −1 and an 8-byte length for huge payloads). Every `serde`
//! type is a `Message` (encoded with postcard), [`Pod`] values cross with no encoding at all, and
//! [`Bytes`] are sent as they are. Decoding is total: any bytes give a value or an [`Error`].
//!
//! ```
//! use std::collections::BTreeMap;
//! use mp_codec::{Frame, Message};
//!
//! let mut scores = BTreeMap::new();
//! scores.insert("ada".to_string(), vec![3u32, 1, 4]);
//! let frame = Frame::encode(&scores)?;
//! let back: BTreeMap<String, Vec<u32>> = frame.decode()?;
//! assert_eq!(back, scores);
//! # Ok::<(), mp_codec::Error>(())
//! ```
//!
//! A value that owns a file descriptor — shared memory, a connection, a queue — holds it in an
//! [`Fd`], which serializes into the frame's fd list; [`wire::send_frame`] sends that list with
//! `SCM_RIGHTS` and [`wire::recv_frame`] installs the descriptors in the receiving process.
//!
//! # Byte buffers
//! serde encodes a `Vec<u8>` one element at a time: 64 KiB take ~85 µs each way, where a
//! [`Bytes`] message takes ~1.4 µs. Send large buffers as [`Bytes`] (or through a connection's
//! `send_bytes`), or mark a field inside a struct `#[serde(with = "serde_bytes")]`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod error;
pub mod fd;
mod message;
mod sys;
pub mod wire;

pub use crate::{
    error::{Error, Result},
    fd::Fd,
    message::{Bytes, Decode, Encode, Frame, Message, Pod},
};
