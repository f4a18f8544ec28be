//! What crosses a process boundary: the [`Message`] trait, [`Frame`]s and their fd side channel.
//!
//! A message is encoded into a [`Frame`] — payload bytes plus the file descriptors the value
//! owns — and travels over a socket or pipe in CPython's `multiprocessing.connection` framing
//! (a 4-byte big-endian length, or −1 and an 8-byte length for huge payloads). Every `serde`
//! type is a `Message` (encoded with postcard), [`Pod`] values cross with no encoding at all, and
//! [`Bytes`] are sent as they are. Decoding is total: any bytes give a value or an [`Error`],
//! recursive types included (see [nesting depth](#nesting-depth)).
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
//!
//! # Nesting depth
//! serde decodes nested values by recursion and postcard sets no limit, so without one the
//! bytes would choose how deep the stack goes: 400 KB of `Node` tags for
//! `enum Tree { Leaf(u8), Node(Box<Tree>) }` overflowed the stack and aborted the process.
//! Decoding therefore fails with [`Error::TooDeep`] past [`MAX_DEPTH`] levels, a level being
//! each sequence, tuple, struct, map, enum variant, `Some` or newtype the value passes through
//! (a `Vec<Vec<u8>>` is two levels deep; a linked list of `Option<Box<Node>>` structs takes
//! two a node). Why 128, the limit `serde_json` also uses: it is far beyond what messages
//! nest in practice, and it keeps the stack a decode can use small and known. A level of a
//! plain recursive enum takes 896 bytes of stack in a debug build and 144 in release
//! (measured, and checked by a test against 2 KiB), so the deepest message fits in
//! 128 × 2 KiB = 256 KiB: a thread with a 256 KiB stack decodes it, and the default 2 MiB
//! leaves room for types whose levels take up to 16 KiB. Types with large stack frames of
//! their own (big arrays built in place while decoding) need that much more per level.
//! The check costs nothing measurable: `cargo xtask bench codec` shows the same medians with
//! and without it, within the noise of a shared 2-core machine.
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "serde")]
mod depth;
mod error;
pub mod fd;
mod message;
pub mod plain;
#[cfg(feature = "serde")]
mod probe;
#[cfg(feature = "serde")]
mod small;
mod sys;
pub mod wire;

/// How many levels deep a decoded message may nest before decoding fails with
/// [`Error::TooDeep`]; see [nesting depth](crate#nesting-depth) for what counts as a level and
/// what this bounds.
///
/// ```
/// let nested = vec![vec![vec![1u8]]]; // three levels
/// let back: Vec<Vec<Vec<u8>>> = multiprocessing::codec::Frame::encode(&nested)?.decode()?;
/// assert_eq!(back, nested);
///
/// // A list of 200 nodes: a valid encoding, refused for its depth (two levels a node).
/// #[derive(serde::Deserialize)]
/// struct List(Option<Box<List>>);
/// let mut bytes = vec![1u8; 200]; // `Some` …
/// bytes.push(0); // … and the `None` at the end
/// let frame = multiprocessing::codec::Frame { bytes, fds: Vec::new() };
/// assert!(matches!(
///     frame.decode::<List>(),
///     Err(multiprocessing::codec::Error::TooDeep(multiprocessing::codec::MAX_DEPTH))
/// ));
/// # Ok::<(), multiprocessing::codec::Error>(())
/// ```
pub const MAX_DEPTH: usize = 128;

pub use crate::{
    error::{Error, Result},
    fd::Fd,
    message::{Bytes, Decode, Encode, Frame, Message, Pod},
};
