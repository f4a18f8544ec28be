//! What travels between the pool and its workers: chunks of encoded items, tasks, replies.
//!
//! A chunk is a run of items, each `varint(len << 2 | fds << 1 | err)`, then (if `fds`) a
//! varint count of descriptors, then `len` bytes; the descriptors follow in the frame's
//! `fds`, in item order. One byte of header per small item, so a chunk of a million `u64`s
//! is about twice their bytes. Argument items never set `err`; a result item sets it when
//! its bytes are a [`CallError`] (postcard) instead of the result.
//!
//! When the target's argument and result types are both plain numbers
//! ([`mp_codec::plain`]: `u64`, `f64`, …), a chunk is instead a run of the arguments' bytes
//! and its reply a run of the results', with each failed item's place zero-filled and its
//! error named in the reply's header. A `map` over a million `u64`s then costs about 1 ns an
//! item to write and read on each side, where encoding them as items cost 5 to 12.
//!
//! A task or a reply is one queue item: its payload's bytes first, then a small header
//! (postcard), then the header's length (`u32` LE) last, so the receiver takes the payload
//! without moving it. Every length is checked against the bytes there: a hostile or torn
//! message is an error, never a panic or an allocation sized by it.

use std::sync::Arc;

use mp_codec::{Decode, Encode, Frame};
use mp_spawn::{CallError, TargetId};
use serde::{Deserialize, Serialize};

/// Appends `value` as a LEB128 varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 varint from the front of `input`; `None` if it is cut short or longer
/// than ten bytes.
#[inline]
pub(crate) fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Writes items into a chunk frame: each is encoded in place after a one-byte header
/// placeholder, which is widened afterwards in the rare case the item is 32 bytes or more.
pub(crate) struct ChunkWriter<'a> {
    frame: &'a mut Frame,
    /// Items written.
    pub(crate) count: u32,
}

impl<'a> ChunkWriter<'a> {
    pub(crate) fn new(frame: &'a mut Frame) -> Self {
        ChunkWriter { frame, count: 0 }
    }

    /// Reserves room for `total` items as big as the first (capped at 64 MiB).
    pub(crate) fn reserve_like_first(&mut self, total: usize) {
        let first = self.frame.bytes.len();
        let room = first.saturating_mul(total.saturating_sub(1)).min(64 << 20);
        self.frame.bytes.reserve(room);
    }

    /// Runs `encode` to append one item's bytes and descriptors, then writes its header.
    /// `encode` says whether what it wrote is an error item. On its failure the item is
    /// removed again and the error returned.
    #[inline]
    pub(crate) fn item<E>(
        &mut self,
        encode: impl FnOnce(&mut Frame) -> Result<bool, E>,
    ) -> Result<(), E> {
        let start = self.frame.bytes.len();
        // The item's descriptors are numbered from 0 in its encoding, as its reader will
        // hand them over: the chunk's (if it has any yet) go aside meanwhile. (Only then:
        // moving even an empty list costs as much as encoding a small item.)
        let chunk_fds = (!self.frame.fds.is_empty()).then(|| std::mem::take(&mut self.frame.fds));
        self.frame.bytes.push(0);
        let encoded = encode(self.frame);
        let nfds = self.frame.fds.len();
        if let Some(chunk_fds) = chunk_fds {
            let item_fds = std::mem::replace(&mut self.frame.fds, chunk_fds);
            self.frame.fds.extend(item_fds);
        }
        let err = match encoded {
            Ok(err) => err,
            Err(e) => {
                self.frame.bytes.truncate(start);
                let keep = self.frame.fds.len() - nfds;
                self.frame.fds.truncate(keep);
                return Err(e);
            }
        };
        let len = self.frame.bytes.len() - start - 1;
        let head = (len as u64) << 2 | u64::from(nfds > 0) << 1 | u64::from(err);
        if head < 0x80 && nfds == 0 {
            self.frame.bytes[start] = head as u8;
        } else {
            let mut header = Vec::with_capacity(12);
            put_varint(&mut header, head);
            if nfds > 0 {
                put_varint(&mut header, nfds as u64);
            }
            self.frame
                .bytes
                .splice(start..start + 1, header.iter().copied());
        }
        self.count += 1;
        Ok(())
    }
}

/// One item read from a chunk.
pub(crate) struct Item<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) fds: usize,
    pub(crate) err: bool,
}

/// Reads the items of a chunk, in order.
pub(crate) struct ChunkReader<'a> {
    rest: &'a [u8],
    fds_left: usize,
}

impl<'a> ChunkReader<'a> {
    pub(crate) fn new(bytes: &'a [u8], fds: usize) -> Self {
        ChunkReader {
            rest: bytes,
            fds_left: fds,
        }
    }

    /// The next item; `Ok(None)` at the end; an error if the bytes do not describe items.
    #[inline]
    pub(crate) fn next_item(&mut self) -> Result<Option<Item<'a>>, &'static str> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let head = take_varint(&mut self.rest).ok_or("an item header is cut short")?;
        let fds = if head & 2 != 0 {
            let n = take_varint(&mut self.rest).ok_or("an item header is cut short")?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= self.fds_left)
                .ok_or("an item names descriptors the chunk does not hold")?
        } else {
            0
        };
        self.fds_left -= fds;
        let len = usize::try_from(head >> 2)
            .ok()
            .filter(|&len| len <= self.rest.len())
            .ok_or("an item is longer than its chunk")?;
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(Some(Item {
            bytes,
            fds,
            err: head & 1 != 0,
        }))
    }
}

/// Fills `scratch` with one item, taking its descriptors from the front of `fds`.
#[inline]
pub(crate) fn load(
    scratch: &mut Frame,
    item: &Item<'_>,
    fds: &mut impl Iterator<Item = std::os::fd::OwnedFd>,
) {
    scratch.clear();
    scratch.bytes.extend_from_slice(item.bytes);
    scratch.fds.extend(fds.take(item.fds));
}

/// The header of a message: what it is, and its numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Head {
    /// Run the chunk in the payload with `target`, and reply. A `plain` chunk is a run of
    /// plain arguments (see [`mp_codec::plain`]) rather than items, and so is its reply.
    Task {
        job: u64,
        chunk: u32,
        target: TargetId,
        plain: bool,
    },
    /// Finish: exit once everything before this is done.
    Stop,
    /// A worker ran a chunk: the payload holds its results; `failed` names the first item
    /// that failed, and why, so the pool can fail a `map` without decoding anything.
    /// `plain` is there when the results are a run of plain values: it names every item that
    /// failed (in order), whose place in the run is zero bytes.
    Done {
        slot: u32,
        generation: u64,
        job: u64,
        chunk: u32,
        failed: Option<(u32, CallError)>,
        plain: Option<Vec<(u32, CallError)>>,
    },
    /// A worker's initializer failed; it exits.
    InitFailed {
        slot: u32,
        generation: u64,
        message: String,
    },
    /// A worker's initializer ran: a death from here on is the worker's, not the
    /// initializer's (one that ended the worker without a panic sends nothing).
    Ready { slot: u32, generation: u64 },
    /// (From the pool's own watcher.) The worker in `slot`, generation `generation`, has
    /// ended; everything it sent before is ahead of this in the queue.
    Ended { slot: u32, generation: u64 },
    /// (From the pool.) Wakes the reply thread to look at the pool's state.
    Wake,
}

/// A message: a header and a payload of items. Cheap to clone (the payload is shared), so
/// the pool keeps each task it sent until its reply comes, to send it again elsewhere should
/// its worker die before starting it.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) head: Head,
    pub(crate) payload: Arc<Frame>,
}

impl Msg {
    pub(crate) fn bare(head: Head) -> Self {
        Msg {
            head,
            payload: Arc::new(Frame::new()),
        }
    }
}

impl Encode for Msg {
    fn encode(&self, frame: &mut Frame) -> mp_codec::Result<()> {
        frame.bytes.extend_from_slice(&self.payload.bytes);
        for fd in &self.payload.fds {
            let copy = fd
                .try_clone()
                .map_err(|err| mp_codec::Error::Os("dup", err))?;
            frame.fds.push(copy);
        }
        let at = frame.bytes.len();
        self.head.encode(frame)?;
        let len = (frame.bytes.len() - at) as u32;
        frame.bytes.extend_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

impl Decode for Msg {
    fn decode(frame: &mut Frame) -> mp_codec::Result<Self> {
        let malformed =
            |why: &str| mp_codec::Error::Malformed(format!("a pool message: {why}").into());
        let total = frame.bytes.len();
        let len = frame
            .bytes
            .last_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b) as usize)
            .ok_or_else(|| malformed("shorter than its header's length"))?;
        let at = (total - 4)
            .checked_sub(len)
            .ok_or_else(|| malformed("its header's length is past its start"))?;
        let mut head = Frame::new();
        head.bytes.extend_from_slice(&frame.bytes[at..total - 4]);
        let head = Head::decode(&mut head)?;
        frame.bytes.truncate(at);
        let payload = Frame {
            bytes: std::mem::take(&mut frame.bytes),
            fds: std::mem::take(&mut frame.fds),
        };
        Ok(Msg {
            head,
            payload: Arc::new(payload),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(items: &[(Vec<u8>, bool)]) -> Frame {
        let mut frame = Frame::new();
        let mut w = ChunkWriter::new(&mut frame);
        for (bytes, err) in items {
            w.item(|f| {
                f.bytes.extend_from_slice(bytes);
                Ok::<_, ()>(*err)
            })
            .unwrap();
        }
        assert_eq!(w.count as usize, items.len());
        frame
    }

    fn read(frame: &Frame) -> Result<Vec<(Vec<u8>, bool)>, &'static str> {
        let mut r = ChunkReader::new(&frame.bytes, frame.fds.len());
        let mut out = Vec::new();
        while let Some(item) = r.next_item()? {
            out.push((item.bytes.to_vec(), item.err));
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn chunks_round_trip(items in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()), 0..40)) {
            let frame = write(&items);
            prop_assert_eq!(read(&frame).unwrap(), items);
        }

        #[test]
        fn any_bytes_read_as_items_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = ChunkReader::new(&bytes, 0);
            let mut n = 0;
            while let Ok(Some(_)) = r.next_item() {
                n += 1;
                prop_assert!(n <= bytes.len());
            }
        }

        #[test]
        fn any_bytes_decode_as_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut frame = Frame { bytes, fds: Vec::new() };
            let _ = Msg::decode(&mut frame);
        }

        #[test]
        fn varints_round_trip(value in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut input = &out[..];
            prop_assert_eq!(take_varint(&mut input), Some(value));
            prop_assert!(input.is_empty());
        }
    }

    #[test]
    fn a_failed_encoding_leaves_the_chunk_as_it_was() {
        let mut frame = write(&[(vec![1, 2], false)]);
        let before = frame.bytes.clone();
        let mut w = ChunkWriter::new(&mut frame);
        let err = w.item(|f| {
            f.bytes.extend_from_slice(&[9; 50]);
            Err::<bool, _>("no")
        });
        assert_eq!(err, Err("no"));
        assert_eq!(frame.bytes, before);
    }

    #[test]
    fn an_item_naming_descriptors_the_chunk_lacks_is_an_error() {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, 2 << 2 | 2);
        put_varint(&mut bytes, 3);
        bytes.extend_from_slice(&[0, 0]);
        let mut r = ChunkReader::new(&bytes, 1);
        assert!(r.next_item().is_err());
    }

    #[test]
    fn a_message_keeps_its_head_and_payload() {
        fn sq(x: u64) -> u64 {
            x * x
        }
        let target = TargetId::of(&sq).unwrap();
        let payload = write(&[(vec![7], false), (vec![], true)]);
        let msg = Msg {
            head: Head::Task {
                job: 3,
                chunk: 9,
                target,
                plain: false,
            },
            payload: Arc::new(payload),
        };
        let mut frame = Frame::encode(&msg).unwrap();
        let back = Msg::decode(&mut frame).unwrap();
        assert_eq!(back.head, msg.head);
        assert_eq!(back.payload.bytes, msg.payload.bytes);
    }
}
