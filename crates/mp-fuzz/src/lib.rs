//! The workspace's fuzz targets, as functions over the bytes a hostile peer controls.
//!
//! Each target returns normally for any input: the reader under test gives a value or an
//! error. A panic, an abort, a hang or a huge allocation is a finding. libFuzzer runs them
//! (`cargo xtask fuzz`, the harness in `fuzz/`), and `cargo test -p mp-fuzz` replays the
//! committed corpus and regressions on the stable toolchain.
//!
//! ```
//! for target in mp_fuzz::TARGETS {
//!     (target.run)(b"\x00\x00\x00\x01x");
//! }
//! ```
#![deny(unsafe_code)]

use std::{
    collections::BTreeMap,
    io::IoSlice,
    os::fd::{AsFd, OwnedFd},
};

use mp_codec::{Fd, Frame};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

/// A fuzz target: its name (the harness's file in `fuzz/fuzz_targets/`, and its corpus's
/// folder) and its function.
#[derive(Clone, Copy)]
pub struct Target {
    /// The name.
    pub name: &'static str,
    /// Runs the target over one input.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: frame,
    },
    Target {
        name: "message",
        run: message,
    },
    Target {
        name: "queue_ring",
        run: queue_ring,
    },
];

/// The largest frame a reader accepts in these targets: past it, `TooLarge`.
const MAX_LEN: usize = 1 << 20;

/// Frames as a peer sends them over a connection, with descriptors in the side channel.
///
/// The input is cut into up to four sends. Each starts with a byte: its low 2 bits say how
/// many descriptors ride with it (0 to 3, copies of `/dev/null`: none, too few, too many or
/// unexpected ones, for what the frames announce), the next 6 bits how many of the
/// following bytes it sends (the rest of the input for the last). The reader takes frames
/// until an error, then the socket is closed: every descriptor that arrived must be closed
/// with it or with the frames (the replay checks that none is left open).
///
/// ```
/// mp_fuzz::frame(&[0, 0, 0, 0, 2, b'h', b'i']);
/// ```
pub fn frame(data: &[u8]) {
    let Ok((ours, theirs)) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return;
    };
    let null = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
    let mut rest = data;
    for part in 0..4 {
        let Some((&head, tail)) = rest.split_first() else {
            break;
        };
        let len = if part == 3 {
            tail.len()
        } else {
            usize::from(head >> 2).min(tail.len())
        };
        let (bytes, after) = tail.split_at(len);
        rest = after;
        let fds: Vec<_> = null
            .iter()
            .cycle()
            .take(usize::from(head & 3))
            .map(|fd| fd.as_fd())
            .collect();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        // At most a few hundred bytes: the socket's buffer takes them without a reader.
        let _ = rustix::net::sendmsg(
            &theirs,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        );
    }
    drop(theirs);
    let mut frame = Frame::new();
    while mp_codec::wire::recv_frame(&ours, MAX_LEN, &mut frame).is_ok() {
        decode_as_many(&mut frame);
    }
}

/// A recursive type, to check the nesting bound.
#[derive(Debug, Serialize, Deserialize)]
enum Tree {
    Leaf(u8),
    Node(Box<Tree>, Box<Tree>),
    Named(String, Option<Box<Tree>>),
}

/// A struct of the kinds of field messages have.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
    weights: Vec<f64>,
    tags: BTreeMap<String, Vec<u32>>,
    parent: Option<Box<Job>>,
    data: (i8, u128, char, bool),
}

/// Decodes the frame as each representative type; every result is a value or an error.
fn decode_as_many(frame: &mut Frame) {
    let bytes = || Frame {
        bytes: frame.bytes.clone(),
        fds: Vec::new(),
    };
    let _ = bytes().decode::<u64>();
    let _ = bytes().decode::<String>();
    let _ = bytes().decode::<Vec<Vec<u8>>>();
    let _ = bytes().decode::<Tree>();
    let _ = bytes().decode::<Job>();
    let _ = bytes().decode::<mp_codec::Bytes>();
    // A value owning descriptors takes them from the frame (closing what it does not use).
    let _ = std::mem::take(frame).decode::<(Fd, Option<Fd>, Vec<Fd>)>();
}

/// A frame's payload as postcard, decoded as representative [`Message`](mp_codec::Message)
/// types: integers, strings, nested sequences, a map, a recursive enum, a struct with
/// floats and `char`s, and values owning descriptors with none there.
///
/// ```
/// mp_fuzz::message(&[1, 2, 3]);
/// ```
pub fn message(data: &[u8]) {
    let mut frame = Frame {
        bytes: data.to_vec(),
        fds: Vec::new(),
    };
    decode_as_many(&mut frame);
}

/// A queue's shared region written over by a hostile process between operations.
///
/// The input is a list of operations, each a byte and its arguments: put an item of a
/// given length (small ones go in the ring under the lock, larger ones are copied outside
/// it, the largest go through the side channel), take one (without waiting), or write
/// bytes at an offset of the region, as any process that maps it can. Every operation must
/// give a value or an error; none may wait (only the `try_` calls are used, so a hang is a
/// finding). An item's own bytes may have been written over: the queue checks its frames'
/// structure, not their contents.
///
/// ```
/// mp_fuzz::queue_ring(&[0, 5, 1, 2, 0, 9, 0xff]);
/// ```
pub fn queue_ring(data: &[u8]) {
    // A fresh queue each time: what an input wrote must not leak into the next one.
    let Ok(queue) = mp_queue::Queue::<Vec<u8>>::builder().capacity(4096).build() else {
        return;
    };
    let Some(region) = region_of(&queue) else {
        return;
    };
    let mut ops = data;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        match op % 3 {
            0 => {
                let (len, rest) = take_u16(ops);
                ops = rest;
                let len = usize::from(len) % 3000;
                let _ = queue.try_put(vec![op; len]);
            }
            1 => {
                // (An item's bytes may have been written over in the ring: only the
                // frames' structure is the queue's to check.)
                let _ = queue.try_get();
            }
            _ => {
                let (at, rest) = take_u16(ops);
                let (len, rest) = rest.split_first().map_or((0, rest), |(&l, r)| (l, r));
                let len = usize::from(len % 16).min(rest.len());
                let (bytes, rest) = rest.split_at(len);
                ops = rest;
                let _ = rustix::io::pwrite(&region, bytes, u64::from(at));
            }
        }
    }
}

/// The memfd of the queue's region, found among the descriptors its handle sends.
fn region_of(queue: &mp_queue::Queue<Vec<u8>>) -> Option<OwnedFd> {
    let frame = Frame::encode(queue).ok()?;
    frame.fds.into_iter().find(|fd| {
        rustix::fs::fstat(fd).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        })
    })
}

fn take_u16(bytes: &[u8]) -> (u16, &[u8]) {
    match bytes {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, &[]),
    }
}
