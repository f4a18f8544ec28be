//! The workspace's fuzz targets, as functions over the bytes a hostile peer controls.
//!
//! Each target returns normally for any input: the reader under test gives a value or an
//! error. A panic, an abort, a hang, a huge allocation or a descriptor left open (see
//! [`checked`]) is a finding. libFuzzer runs them
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

use mp_codec::{Fd, Frame, wire::MAX_FDS};
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

/// Runs `target` over `data` and checks that it left no descriptor open: libFuzzer's
/// harness runs every input this way, so a leak is a finding (a panic) on the input that
/// made it. It counts the entries of `/proc/self/fd` before and after (a few µs).
///
/// ```
/// mp_fuzz::checked(mp_fuzz::frame, b"\x14\x00\x00\x00\x01x");
/// ```
///
/// # Panics
/// If the count differs after the run.
pub fn checked(target: fn(&[u8]), data: &[u8]) {
    let before = open_descriptors();
    target(data);
    let after = open_descriptors();
    assert_eq!(
        after, before,
        "the input left {after} descriptors open where there were {before}"
    );
}

/// How many descriptors this process has open (the one that reads the count excluded).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count())
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
    Target {
        name: "handshake",
        run: handshake,
    },
    Target {
        name: "region",
        run: region,
    },
];

/// The largest frame a reader accepts in these targets: past it, `TooLarge`.
const MAX_LEN: usize = 1 << 20;

/// Frames as a peer sends them over a connection, with descriptors in the side channel.
///
/// The input is cut into up to four sends. Each starts with a byte: its low 2 bits say how
/// many descriptors ride with it (copies of `/dev/null`: none, too few, too many or
/// unexpected ones, for what the frames announce): 0, 1, 2, or the most one message can
/// carry ([`MAX_FDS`]). With that many, the reading socket also
/// asks for the sender's credentials, which take room in the same control buffer, so the
/// kernel truncates the descriptors (`MSG_CTRUNC`). The next 6 bits say how many of the
/// following bytes the send carries (the rest of the input for the last). The reader takes
/// frames until an error, then the socket is closed: every descriptor that arrived must be
/// closed with it or with the frames (the replay checks that none is left open).
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
    let mut sends = Vec::new();
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
        sends.push(([0, 1, 2, MAX_FDS][usize::from(head & 3)], bytes));
    }
    if sends.iter().any(|&(fds, _)| fds == MAX_FDS) {
        // (Set before sending: the kernel attaches credentials as it queues a message.)
        let _ = rustix::net::sockopt::set_socket_passcred(&ours, true);
    }
    for (count, bytes) in sends {
        let fds: Vec<_> = null
            .iter()
            .cycle()
            .take(count)
            .map(|fd| fd.as_fd())
            .collect();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
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
    // A connection: a socket or pipe judged by its descriptor, or a ring end whose queues
    // check their own parts (on copies of the descriptors, closed with whatever came out).
    let _ = Frame {
        bytes: frame.bytes.clone(),
        fds: frame
            .fds
            .iter()
            .filter_map(|fd| fd.try_clone().ok())
            .collect(),
    }
    .decode::<mp_pipe::Connection>();
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
/// The input is a byte choosing the ring (4 KiB or 128 KiB), then a list of operations,
/// each a byte and its arguments: put an item of a given length (small ones go in the ring
/// under the lock, larger ones are copied outside it, the largest go through the side
/// channel), take one (without waiting), or write
/// bytes at an offset of the region, as any process that maps it can. Every operation must
/// give a value or an error; none may wait (only the `try_` calls are used, so a hang is a
/// finding). An item's own bytes may have been written over: the queue checks its frames'
/// structure, not their contents.
///
/// ```
/// mp_fuzz::queue_ring(&[0, 5, 1, 2, 0, 9, 0xff]);
/// ```
pub fn queue_ring(data: &[u8]) {
    // The first byte picks the ring: 4 KiB (laps come quickly), or 128 KiB, where a ring
    // found empty 64 KiB into a lap starts again at its top.
    let Some((&size, data)) = data.split_first() else {
        return;
    };
    let capacity = if size % 2 == 0 { 4096 } else { 128 << 10 };
    // A fresh queue each time: what an input wrote must not leak into the next one.
    let Ok(queue) = mp_queue::Queue::<Vec<u8>>::builder()
        .capacity(capacity)
        .build()
    else {
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
    frame.fds.into_iter().find(is_regular_file)
}

fn take_u16(bytes: &[u8]) -> (u16, &[u8]) {
    match bytes {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, &[]),
    }
}

/// The authentication handshake, either side, before the peer is authenticated: the peer's
/// bytes are the input.
///
/// The first byte chooses the side: even, we deliver the challenge (a `Listener`'s first
/// step) and read the peer's answer; odd, we answer the peer's challenge (a `Client`'s) and
/// read its verdict. The rest is what the peer sent, in CPython's framing, after which it
/// sends nothing more (it still reads, so our writes go through). Either way: `Ok` only for
/// a right answer, else an error, and never a wait past the handshake's timeout.
///
/// ```
/// mp_fuzz::handshake(b"\x01\x00\x00\x00\x0b#CHALLENGE#");
/// ```
pub fn handshake(data: &[u8]) {
    let Some((&side, peer_bytes)) = data.split_first() else {
        return;
    };
    let Ok((ours, theirs)) = mp_pipe::pipe(true) else {
        return;
    };
    // A few KB at most: the socket's buffer takes them all before we read.
    if rustix::io::write(&theirs, peer_bytes).is_err()
        || rustix::net::shutdown(&theirs, rustix::net::Shutdown::Write).is_err()
    {
        return;
    }
    let timeout = std::time::Duration::from_secs(5);
    let _ = if side % 2 == 0 {
        mp_pipe::deliver_challenge(&ours, KEY, timeout)
    } else {
        mp_pipe::answer_challenge(&ours, KEY, timeout)
    };
}

/// The key of [`handshake`]'s side.
const KEY: &[u8] = b"fuzz";

/// A shared region's header, as another process could have written it, met by a process
/// that attaches: the handle of a `Value`, an `Array`, a `RawArray`, a `Lock`, a ring
/// pipe's end or a queue crosses as its region's memfd, and the input is written over the start of that region
/// before the handle is decoded again (attached) and used with calls that do not wait.
///
/// The first byte chooses the kind, the second where the write goes (in 8-byte steps), the
/// rest is written there. Attaching gives a handle or an error; a handle then gives values
/// or errors.
///
/// ```
/// mp_fuzz::region(&[0, 0, 0xff, 0xff]);
/// ```
pub fn region(data: &[u8]) {
    let [kind, at, bytes @ ..] = data else {
        return;
    };
    let at = u64::from(*at) * 8;
    let short = std::time::Duration::from_millis(1);
    match kind % 6 {
        0 => attach_and(
            mp_shm::Value::new(7u64),
            at,
            bytes,
            |v: mp_shm::Value<u64>| {
                if v.get_lock().acquire_timeout(short).is_held() {
                    let _ = v.get_lock().release();
                }
            },
        ),
        1 => attach_and(
            mp_shm::Array::<u32>::from_slice(&[1, 2, 3]),
            at,
            bytes,
            |a: mp_shm::Array<u32>| {
                let _ = a.len();
                if a.get_lock().acquire_timeout(short).is_held() {
                    let _ = a.get_lock().release();
                }
            },
        ),
        2 => attach_and(
            mp_shm::RawArray::<u16>::from_slice(&[4, 5, 6, 7]),
            at,
            bytes,
            |a: mp_shm::RawArray<u16>| {
                let _ = a.to_vec();
                let _ = a.set(a.len().saturating_sub(1), 9);
                let _ = a.get(a.len());
            },
        ),
        3 => attach_and(mp_sync::Lock::new(), at, bytes, |l: mp_sync::Lock| {
            if let Ok(guard) = l.lock_timeout(short) {
                drop(guard);
            }
        }),
        4 => attach_and(
            // One end of a ring pipe, the other gone: its first region is the ring it reads.
            mp_pipe::pipe(true).map(|(ours, _theirs)| ours),
            at,
            bytes,
            |c: mp_pipe::Connection| {
                let _ = c.set_nonblocking(true);
                let _ = c.poll(Some(short));
                let _ = c.recv_bytes();
                let _ = c.send_bytes(b"hostile");
            },
        ),
        _ => attach_and(
            mp_queue::Queue::<u8>::new(),
            at,
            bytes,
            |q: mp_queue::Queue<u8>| {
                let _ = q.try_put(1);
                let _ = q.try_get();
                let _ = q.qsize();
                // Arms the doorbell (what `connection::wait` does first).
                let _ = q.as_fd();
                let _ = q.empty();
            },
        ),
    }
}

/// Makes a handle, writes `bytes` at `at` in its region, attaches to the region again from
/// the handle's encoding and runs `using` on what comes out.
fn attach_and<H, E>(made: Result<H, E>, at: u64, bytes: &[u8], using: impl FnOnce(H))
where
    H: mp_codec::Message,
{
    let Ok(handle) = made else {
        return;
    };
    let Ok(mut frame) = Frame::encode(&handle) else {
        return;
    };
    if let Some(region) = frame.fds.iter().find(|fd| is_regular_file(fd)) {
        let _ = rustix::io::pwrite(region, bytes, at);
    }
    drop(handle);
    if let Ok(again) = std::mem::take(&mut frame).decode::<H>() {
        using(again);
    }
}

fn is_regular_file(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
    })
}

#[cfg(test)]
mod tests {
    // (The only test of this binary: nothing else opens descriptors meanwhile.)
    #[test]
    #[should_panic(expected = "descriptors open")]
    fn checked_finds_a_descriptor_left_open() {
        fn leaky(_: &[u8]) {
            std::mem::forget(std::fs::File::open("/dev/null").unwrap());
        }
        super::checked(leaky, b"");
    }
}
