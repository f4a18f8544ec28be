//! The ring: a bounded multi-producer, multi-consumer queue of variable-length frames in one
//! shared region, built so that a process killed anywhere in it never publishes a torn frame
//! and never wedges the others.
//!
//! # Layout
//! The region's payload is a control block of [`CONTROL`] bytes (one cache line per party
//! that writes it), then `cap` bytes of ring (a power of two). Positions are byte counts
//! that only grow; a position's place in the ring is `pos % cap`. Every frame starts
//! 8-aligned with a [`HDR`]-byte header — state (`u32`), payload length (`u32`) — then, for
//! a frame copied outside the locks, its owner's identity (two `u64`, see [`OWNED`]), then
//! its payload, padded to 8. (A small item, copied under the locks, has no owner to record:
//! a `u64` below 2^56, 8 bytes encoded at most, takes a frame of 16 bytes, four to a cache
//! line.) A frame never wraps: when one does not fit before the end, a `PAD` frame fills
//! the rest of that lap. (Frames are 8-aligned and headers 8 bytes, so a lap never ends
//! with less room than a header; a reader would take such an end for padding all the
//! same.)
//!
//! # Protocol
//! - `tail` (where the next frame goes) moves only under the producers' lock, `head` (the
//!   oldest frame whose bytes are still in use) only under the consumers' lock.
//! - A producer, under its lock, writes the frame's header as `RESERVED` with itself as
//!   owner and moves `tail` past it; then, without the lock, copies the payload and switches
//!   the state to `READY`. Consumers never read a frame before it is `READY`, so a producer
//!   killed during its copy leaves a `RESERVED` frame nobody ever reads: no torn item.
//! - A consumer, under its lock, takes the first `READY` frame from its cursor on (every
//!   frame before the cursor is settled; frames still `RESERVED` by a slow producer are
//!   passed over: order is FIFO per producer, as in Python), marks it `CLAIMED` with itself
//!   as owner, and lets go of the lock; then copies the payload out and marks it `DONE`.
//!   A frame passed over was reserved before any frame after it that the consumer takes
//!   first, so by another producer: past a frame found `RESERVED`, a consumer takes only
//!   frames below a `tail` it read before it looked at that frame (after a fresh read of
//!   `tail` it looks at that frame again).
//! - Small items ([`SMALL`] bytes at most) do both copies under the lock: the producer's
//!   frame is owned by whoever holds the producers' lock ([`Owner::LOCK_HOLDER`]), and the
//!   consumer copies and marks `DONE` in one step, so a consumer killed while copying leaves
//!   the item `READY` for the next.
//! - The shortest items ([`SHORT`] bytes at most) into an uncounted ring skip `RESERVED`:
//!   the producer writes the whole frame, `READY`, past `tail`, then moves `tail` (a
//!   producer killed before that leaves bytes nobody reads; one killed after it has put its
//!   item, though its `put` never returned, as with a small put killed after its `READY`).
//!   A consumer whose cursor is at `head` takes the frame there and moves `head`
//!   ([`Ring::put_short`], [`Ring::take_short`]).
//! - Space comes back when `head` moves over `DONE`, `DEAD` and `PAD` frames (reclaiming:
//!   now and then by consumers, and by any producer short of room). A consumer that takes
//!   the first frame after `head` (the usual case: a consumer keeping up) moves `head` past
//!   it at once and marks nothing, so it writes no line a producer is writing.
//! - Each side keeps its own copy of the other side's position, on its own line: producers
//!   read `head` (which consumers write) only when their copy shows too little room, and
//!   consumers read `tail` (which producers write on every put) only once they have passed
//!   their copy. Copies are lower bounds of positions that only grow, checked like
//!   everything else read from the region; a producer taking over the lock of one that died
//!   between moving `tail` and its copy copies `tail` again ([`Ring::resync_put`]).
//! - Sleeping: a small put publishes its frame and looks for sleeping consumers under the
//!   producers' lock, and a small get frees room and looks for sleeping producers under the
//!   consumers' lock, with no fence in between. A process about to sleep counts itself
//!   asleep, then passes through the other side's lock before its last look: either the
//!   other side's step came before, and the look sees it, or after, and that side sees it
//!   counted and wakes it. So the busy path pays no fence beyond its lock.
//! - A frame whose owner died stays `RESERVED` or `CLAIMED`; a process that has waited
//!   10 ms asks whether the owner is alive and, if not, marks the frame `DEAD`: the item of
//!   a producer killed mid-put never existed (its `put` did not return), and a consumer
//!   killed mid-get loses the one item it was taking.
//! - Each step that other processes rely on is one atomic store made after the data it
//!   publishes, so a process killed between two steps leaves a state the next one handles.
//!   The only counter kept outside a frame, `items` (frames `RESERVED` or `READY`), can be
//!   off by one after a death inside a lock; the next holder of that lock recounts it
//!   ([`Ring::recount`]).
//! - Nothing read from the region is trusted: a header that does not describe a frame
//!   that fits is reported as [`Corrupt`], never followed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{
    bias::{self, Local, Lock},
    owner::Owner,
    sys::Bytes,
};

/// Bytes of control block before the ring.
pub(crate) const CONTROL: usize = GET_TABLE + bias::TABLE_BYTES;
/// Bytes of a frame header.
pub(crate) const HDR: usize = 8;
/// Bytes of the owner's identity an owned frame keeps after its header.
const OWNER: usize = 16;
/// The smallest ring (bytes).
pub(crate) const MIN_CAPACITY: usize = 4096;
/// Items of at most this many bytes are copied in and out under the lock, in one step:
/// cheaper (no owner to record, fewer atomic read-modify-writes) and safer (a consumer killed
/// while copying leaves the item for the next). Larger ones are copied outside it, so that
/// processes copy in parallel, with the frame's owner recorded.
pub(crate) const SMALL: usize = 1024;
/// Refreshes of `tail` in a row that found frames (none finding the queue empty) before a
/// consumer on the short path pauses before the next (see [`Ring::take_short`])…
const CHASE: u32 = 8;
/// …for this long: a producer putting a `u64` every 30 ns or so is then some 60 frames (a
/// kilobyte, whole lines) ahead. Measured with two processes moving `u64`s: 22 M/s with no
/// pause, 37 M/s with 1 µs, 43 M/s with 2 or 4 µs.
const CHASE_PAUSE: std::time::Duration = std::time::Duration::from_micros(2);
/// A pause pays when the producers put at least this many bytes during it (a few lines; a
/// `u64` streamed from another CPU puts about 2 KiB in a pause). One that sees less met a
/// producer that is not streaming: one putting now and then, or this very thread (a put
/// and a get in turn, or a few puts and as many gets, where every pause would find nothing
/// new).
const PAUSE_PAYS: u64 = 256;
/// After a pause that did not pay, no pause for this many refreshes, twice as many after
/// each further one in a row, up to [`QUIET_MAX`] (a pause in every 65,536 gets costs a get
/// a few hundredths of a nanosecond); a pause that pays starts again from here.
const QUIET_MIN: u32 = 64;
const QUIET_MAX: u32 = 1 << 16;

/// Items of at most this many bytes take the short paths ([`Ring::put_short`],
/// [`Ring::take_short`]) when nothing unusual is going on.
pub(crate) const SHORT: usize = 64;
/// A short item always fits under [`Ring::in_ring_limit`] (at least an eighth of the
/// smallest ring), so a put of one need not ask.
const _: () = assert!(frame_size(SHORT, true) <= MIN_CAPACITY / 8);

// The control block, one cache line per party that writes a word often, so that reading
// another party's word never takes a line that the reader's own lock sits in.
// Written at creation (and `POLLERS` once): read by all, moved by none.
const CAPACITY: usize = 0;
const MAXSIZE: usize = 8;
/// The largest frame kept in the ring (bytes, see `Ring::in_ring_limit`); larger items go
/// beside it.
const IN_RING: usize = 24;
/// Nonzero once some process asked for the queue's descriptor, to wait on it: puts and gets
/// then ring its doorbell on empty/non-empty transitions.
pub(crate) const POLLERS: usize = 16;
// The producers' own line: their lock, their copy of `tail` (a producer never reads `TAIL`,
// which consumers poll, so writing it costs no wait for the line to come back), and the
// next big item's number (see [`BIG`]).
const PUT_LOCK: usize = 64;
const PUT_TAIL: usize = 112;
const BIG_TAIL: usize = 120;
#[cfg(test)]
pub(crate) const BIG_TAIL_FOR_TESTS: usize = BIG_TAIL;
// The consumers' own line: their lock, and where they start looking for a `READY` frame
// (every frame from `head` to it is settled: claimed, done, dead or padding; a hint,
// checked, never trusted).
const GET_LOCK: usize = 128;
// `tail` as the consumers last read it: they read `TAIL` (which producers write on every
// put) only once they have taken every frame below their copy, so a producer ahead of its
// consumer writes a line nobody is reading.
const GET_TAIL: usize = 176;
const CURSOR: usize = 184;
// Written by producers on every put, read by consumers.
const TAIL: usize = 192;
// Written by consumers now and then (reclaiming), read by producers.
const HEAD: usize = 256;
// Kept only for a bounded or polled queue: written by both.
const ITEMS: usize = 320;
/// The top bit of `ITEMS`: a recount is owed. Counts never come near it.
const RECOUNT: u64 = 1 << 63;
// Sleepers and the words they sleep on: written only when someone sleeps, so a busy queue
// reads this line and never moves it.
const PUBLISHED: usize = 384;
const GET_SLEEPERS: usize = 388;
const FREED: usize = 392;
const PUT_SLEEPERS: usize = 396;
/// Of the consumers counted in `GET_SLEEPERS`, those asleep on the doorbell (with a peer's
/// socket beside it, see `Queue::get_raw`) rather than on `PUBLISHED`: a producer waking
/// consumers rings the doorbell too while any are.
const BELL_SLEEPERS: usize = 400;
/// `JoinableQueue`'s count of unfinished tasks (`u64`)…
pub(crate) const UNFINISHED: usize = 448;
/// …bumped when it reaches zero (joiners sleep on it)…
pub(crate) const JOINED: usize = 456;
/// …and how many sleep there.
pub(crate) const JOIN_SLEEPERS: usize = 460;
// The producers' second line: `head` as they last read it. `head` only grows, so room seen
// there is room; a producer reads the consumers' `HEAD` only when that copy shows too
// little.
const PUT_HEAD: usize = 512;
/// Where a producer next looks whether the ring is empty, to start the next frame at the
/// top of a lap (see [`RESTART`]).
const NEXT_LOOK: usize = 520;
/// A producer that finds the ring empty this far (or farther) into a lap pads the rest of the
/// lap and puts its frame at the top of the next: a queue whose consumers keep up cycles
/// through its first pages only, which stay in cache, and the rest of the memfd is never
/// touched (a pipe or queue used for small messages costs a few pages however large its
/// ring). It looks at most once per this many bytes put, so a ring that is never empty pays
/// one read of the consumers' line per 64 KiB.
const RESTART: u64 = 64 << 10;

/// Each side's bias word (see [`bias`]): read by its holder once per operation, written
/// only when the bias moves, so a line that stays in every cache (the two share it: taking
/// one side back costs the other side's holder one miss).
const PUT_BIAS: usize = 576;
const GET_BIAS: usize = 584;
/// Each side's slot table (see [`bias`]), a line per slot.
const PUT_TABLE: usize = 640;
const GET_TABLE: usize = PUT_TABLE + bias::TABLE_BYTES;

const _: () = assert!(std::mem::size_of::<mp_sync::RawLock>() <= PUT_TAIL - PUT_LOCK);
const _: () = assert!(std::mem::size_of::<mp_sync::RawLock>() <= GET_TAIL - GET_LOCK);
const _: () = assert!(JOIN_SLEEPERS + 4 <= PUT_HEAD && NEXT_LOOK + 8 <= CONTROL);

const RESERVED: u32 = 1;
const READY: u32 = 2;
const CLAIMED: u32 = 3;
const DONE: u32 = 4;
const DEAD: u32 = 5;
const PAD: u32 = 6;

/// In a frame's length word: the payload is not the item but a 16-byte reference (number, length), and the item's
/// bytes (and descriptors) travel through the side channel.
const BIG: u32 = 1 << 31;
/// In a frame's length word: the frame records its owner after the header (a frame copied
/// outside the locks); without it, the frame is owned by whoever holds the lock of its side.
const OWNED: u32 = 1 << 30;
/// In a frame's length word: the payload's length.
const LEN: u32 = OWNED - 1;

/// The ring's bytes do not describe frames: another process wrote garbage into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

/// A frame reserved by this process, to fill and publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pos: u64,
    len: usize,
    /// Whether this reservation made the queue non-empty.
    pub(crate) first: bool,
}

/// A frame claimed by this process, to read and release.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    pos: u64,
    len: usize,
    owned: bool,
    /// Whether the payload is a big item's reference.
    pub(crate) big: bool,
    /// Whether the payload was copied out already, and the frame released (small items).
    pub(crate) copied: bool,
}

/// What a ring is made with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// The most items it holds (0: as many as fit).
    pub(crate) maxsize: u64,
    /// The largest frame kept in it (see [`Ring::in_ring_limit`]).
    pub(crate) in_ring: usize,
}

impl Claim {
    /// The payload's length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The ring inside a mapped region (see the module docs).
pub(crate) struct Ring {
    mem: Bytes,
    cap: usize,
    /// What this process changes of its own: behind a pointer, so that no field of the ring
    /// itself changes once it is made and the compiler may keep `mem` and `cap` in registers
    /// across the stores of an operation (and check each bound once).
    locals: Box<Locals>,
    /// The doorbell: an eventfd every handle holds, readable while the queue may hold an
    /// item (for `wait`) and rung for consumers asleep on it ([`BELL_SLEEPERS`]).
    bell: std::os::fd::OwnedFd,
}

/// A process's own state of a ring.
#[derive(Debug, Default)]
struct Locals {
    /// This process's state of each side's biased lock.
    put: Local,
    get: Local,
    /// This process's consumers' count of `tail` refreshes in a row that found frames, none
    /// finding the queue empty (see [`CHASE`]): a consumer keeping up with a producer one
    /// frame at a time. Below zero (as an `i32`) after a pause that did not pay, for as many
    /// refreshes as [`QUIET_MIN`] and up. Shared by its threads: a hint, raced harmlessly.
    chase: AtomicU32,
    /// How many refreshes the next pause that does not pay holds the following one off for
    /// (0: [`QUIET_MIN`]).
    quiet: AtomicU32,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Gives up this process's bias of either side (the lock with it) and its slots.
        self.put_lock().forget();
        self.get_lock().forget();
    }
}

/// The bytes a frame with a payload of `len` bytes takes, with its owner recorded or not.
pub(crate) const fn frame_size(len: usize, owned: bool) -> usize {
    HDR + if owned { OWNER } else { 0 } + len.next_multiple_of(8)
}

impl Ring {
    /// The ring in `mem` (control block and ring bytes), as a fresh region of zeros or as
    /// another process left it. Writes the configuration when `init`.
    ///
    /// # Panics
    /// If `mem` is not `CONTROL + cap` bytes with `cap` a power of two of at least
    /// [`MIN_CAPACITY`] (callers check what they read from a peer first).
    pub(crate) fn new(
        mem: Bytes,
        cap: usize,
        init: Option<Config>,
        bell: std::os::fd::OwnedFd,
    ) -> Ring {
        assert!(cap.is_power_of_two() && cap >= MIN_CAPACITY && mem.len() == CONTROL + cap);
        let ring = Ring {
            mem,
            cap,
            locals: Box::default(),
            bell,
        };
        if let Some(config) = init {
            ring.word(CAPACITY).store(cap as u64, Ordering::Relaxed);
            ring.word(MAXSIZE).store(config.maxsize, Ordering::Relaxed);
            ring.word(IN_RING)
                .store(config.in_ring as u64, Ordering::Relaxed);
        }
        ring
    }

    /// The doorbell.
    #[inline]
    pub(crate) fn bell(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.bell.as_fd()
    }

    /// How many consumers sleep on the doorbell.
    #[inline]
    pub(crate) fn bell_sleepers(&self) -> &AtomicU32 {
        self.word32(BELL_SLEEPERS)
    }

    /// The largest frame (bytes, header included) that goes in the ring; an item needing a
    /// larger one goes beside it. As set at creation, but never more than half the ring
    /// nor less than a small item's frame (another process may have written anything there).
    #[inline]
    pub(crate) fn in_ring_limit(&self) -> usize {
        let set = self.word(IN_RING).load(Ordering::Relaxed);
        (set.min(self.cap as u64 / 2) as usize).max(frame_size(SMALL, true).min(self.cap / 8))
    }

    /// Ring bytes.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// The most items the ring holds (0: as many as fit).
    #[inline]
    pub(crate) fn maxsize(&self) -> u64 {
        self.word(MAXSIZE).load(Ordering::Relaxed)
    }

    /// The producers' lock (biased: see [`bias`]).
    #[inline]
    pub(crate) fn put_lock(&self) -> Lock<'_> {
        Lock::new(
            self.mem.lock_at::<PUT_LOCK>(),
            self.word(PUT_BIAS),
            &self.mem,
            PUT_TABLE,
            &self.locals.put,
        )
    }

    /// The consumers' lock (biased: see [`bias`]).
    #[inline]
    pub(crate) fn get_lock(&self) -> Lock<'_> {
        Lock::new(
            self.mem.lock_at::<GET_LOCK>(),
            self.word(GET_BIAS),
            &self.mem,
            GET_TABLE,
            &self.locals.get,
        )
    }

    #[inline]
    pub(crate) fn published(&self) -> &AtomicU32 {
        self.word32(PUBLISHED)
    }

    #[inline]
    pub(crate) fn freed(&self) -> &AtomicU32 {
        self.word32(FREED)
    }

    #[inline]
    pub(crate) fn get_sleepers(&self) -> &AtomicU32 {
        self.word32(GET_SLEEPERS)
    }

    #[inline]
    pub(crate) fn put_sleepers(&self) -> &AtomicU32 {
        self.word32(PUT_SLEEPERS)
    }

    #[inline]
    pub(crate) fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8));
        &self.mem.head64::<{ CONTROL / 8 }>()[offset / 8]
    }

    #[inline]
    pub(crate) fn word32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4));
        &self.mem.head32::<{ CONTROL / 4 }>()[offset / 4]
    }

    /// The 4-byte word at any offset of the region (a test writing garbage past the
    /// control block).
    #[cfg(test)]
    pub(crate) fn any_word32(&self, offset: usize) -> &AtomicU32 {
        self.mem.u32_at(offset)
    }

    /// Items put (or being put) and not yet taken: a snapshot.
    #[inline]
    pub(crate) fn items(&self) -> u64 {
        self.word(ITEMS).load(Ordering::Relaxed) & !RECOUNT
    }

    /// Whether the item count is owed a recount (see [`RECOUNT`]).
    pub(crate) fn recount_owed(&self) -> bool {
        self.word(ITEMS).load(Ordering::Relaxed) & RECOUNT != 0
    }

    /// Marks the item count as owed a recount: a process died holding a lock and the
    /// repair could not have both locks in its caller's time.
    pub(crate) fn owe_recount(&self) {
        self.word(ITEMS).fetch_or(RECOUNT, Ordering::Relaxed);
    }

    /// One item fewer in the count (never below 0), keeping the [`RECOUNT`] mark.
    fn count_one_less(&self, order: Ordering) {
        let _ = self
            .word(ITEMS)
            .fetch_update(order, Ordering::Relaxed, |n| {
                (n & !RECOUNT).checked_sub(1).map(|c| c | (n & RECOUNT))
            });
    }

    #[inline]
    fn at(&self, pos: u64) -> usize {
        CONTROL + (pos as usize & (self.cap - 1))
    }

    /// The state word of the frame at `pos` (an 8-aligned position).
    #[inline]
    fn state(&self, pos: u64) -> &AtomicU32 {
        &self.mem.header(pos)[0]
    }

    /// The length word of the frame at `pos` (an 8-aligned position).
    #[inline]
    fn len_word(&self, pos: u64) -> &AtomicU32 {
        &self.mem.header(pos)[1]
    }

    /// Where the payload of the frame at `pos` starts.
    #[inline]
    fn payload(&self, pos: u64, owned: bool) -> usize {
        self.at(pos) + HDR + if owned { OWNER } else { 0 }
    }

    /// Records the owner of an owned frame.
    #[inline]
    fn set_owner(&self, pos: u64, owner: Owner) {
        let at = self.at(pos) + HDR;
        self.mem.u64_at(at).store(owner.0[0], Ordering::Relaxed);
        self.mem.u64_at(at + 8).store(owner.0[1], Ordering::Relaxed);
    }

    /// The owner of the frame at `pos`: the one recorded, or the lock holder's if none is.
    #[inline]
    fn owner(&self, pos: u64) -> Owner {
        let at = self.at(pos) + HDR;
        // Read again, not the word `frame_at` checked: a frame whose flag another process
        // set meanwhile, at the very end of the ring, must not send the read past it.
        if self.len_word(pos).load(Ordering::Relaxed) & OWNED == 0 || at + OWNER > self.mem.len() {
            return Owner::LOCK_HOLDER;
        }
        Owner([
            self.mem.u64_at(at).load(Ordering::Relaxed),
            self.mem.u64_at(at + 8).load(Ordering::Relaxed),
        ])
    }

    /// `head` and `tail`, checked to describe at most one lap.
    fn ends(&self) -> Result<(u64, u64), Corrupt> {
        let head = self.word(HEAD).load(Ordering::Acquire);
        let tail = self.word(TAIL).load(Ordering::Acquire);
        if !self.one_lap(head, tail) {
            return Err(Corrupt(format!(
                "head {head} and tail {tail} are not one lap"
            )));
        }
        Ok((head, tail))
    }

    /// Whether `head` and `tail` could be the ends of the ring: 8-aligned, at most a lap
    /// apart in order, and far from the top of `u64` (positions count bytes from 0: 2^62
    /// of them take centuries), so that no sum of a position and a size overflows.
    #[inline]
    fn one_lap(&self, head: u64, tail: u64) -> bool {
        head <= tail
            && tail - head <= self.cap as u64
            && tail <= 1 << 62
            && head.is_multiple_of(8)
            && tail.is_multiple_of(8)
    }

    /// `head`, and `tail` as the consumers last read it ([`GET_TAIL`], a lower bound: every
    /// frame below it is whole), or the real `tail` when that copy is behind `head` or does
    /// not describe one lap. The caller holds the consumers' lock.
    fn get_ends(&self) -> Result<(u64, u64), Corrupt> {
        let head = self.word(HEAD).load(Ordering::Acquire);
        let tail = self.word(GET_TAIL).load(Ordering::Relaxed);
        if self.one_lap(head, tail) {
            return Ok((head, tail));
        }
        self.get_fresh_ends()
    }

    /// `head` and `tail`, checked, with the consumers' copy of `tail` brought up to date.
    /// The caller holds the consumers' lock.
    fn get_fresh_ends(&self) -> Result<(u64, u64), Corrupt> {
        let (head, tail) = self.ends()?;
        self.word(GET_TAIL).store(tail, Ordering::Relaxed);
        Ok((head, tail))
    }

    /// `head` and `tail` as the producers keep them on their own lines ([`PUT_HEAD`] may lag
    /// behind `head`: it is a lower bound), or, when those do not describe one lap (a
    /// process wrote over them), the consumers' words. The caller holds the producers' lock.
    fn put_ends(&self) -> Result<(u64, u64), Corrupt> {
        let head = self.word(PUT_HEAD).load(Ordering::Relaxed);
        let tail = self.word(PUT_TAIL).load(Ordering::Relaxed);
        if self.one_lap(head, tail) {
            return Ok((head, tail));
        }
        self.resync_put()?;
        self.ends()
    }

    /// Copies `head` and `tail` into the producers' own words, after a producer died
    /// holding their lock (it may have moved `tail` and not its copy) or a reset. The
    /// caller holds the producers' lock.
    pub(crate) fn resync_put(&self) -> Result<(), Corrupt> {
        let (head, tail) = self.ends()?;
        self.word(PUT_TAIL).store(tail, Ordering::Relaxed);
        self.word(PUT_HEAD).store(head, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the producers' copies fail their check, so that the next producer copies the
    /// positions again (and finds any corruption there). The caller holds the producers'
    /// lock.
    pub(crate) fn spoil_put(&self) {
        self.word(PUT_HEAD).store(u64::MAX, Ordering::Relaxed);
    }

    /// Moves `tail` (and the producers' copy) to `tail`. The caller holds the producers'
    /// lock.
    #[inline]
    fn set_tail(&self, tail: u64) {
        self.word(TAIL).store(tail, Ordering::Release);
        self.word(PUT_TAIL).store(tail, Ordering::Relaxed);
    }

    /// The frame at `pos` (below `tail`): its state and the bytes it takes up to the next
    /// frame, checked to fit.
    fn frame_at(&self, pos: u64, tail: u64) -> Result<(u32, u64), Corrupt> {
        let left = (self.cap - (pos as usize & (self.cap - 1))) as u64;
        if left < HDR as u64 {
            return Ok((PAD, left));
        }
        let state = self.state(pos).load(Ordering::Acquire);
        let word = self.len_word(pos).load(Ordering::Relaxed);
        let len = (word & LEN) as usize;
        let size = match state {
            PAD => (HDR + len) as u64,
            RESERVED | READY | CLAIMED | DONE | DEAD => frame_size(len, word & OWNED != 0) as u64,
            other => return Err(Corrupt(format!("frame at {pos} has state {other}"))),
        };
        if size > left || pos + size > tail || (state == PAD && size != left) {
            return Err(Corrupt(format!(
                "frame at {pos} of {size} bytes does not fit ({left} to the end of the ring, \
                 tail at {tail})"
            )));
        }
        Ok((state, size))
    }

    /// Reserves a frame for a payload of `len` bytes, owned by `me`: `None` when there is
    /// no room (or `maxsize` items are in). The caller holds the producers' lock and has
    /// checked `len <= max_payload()`.
    /// `big`: the frame will hold a big item's reference (see [`BIG`]).
    pub(crate) fn reserve(
        &self,
        len: usize,
        big: bool,
        me: Owner,
    ) -> Result<Option<Slot>, Corrupt> {
        let Some(pos) = self.room_for(frame_size(len, true))? else {
            return Ok(None);
        };
        self.len_word(pos).store(
            len as u32 | OWNED | if big { BIG } else { 0 },
            Ordering::Relaxed,
        );
        self.set_owner(pos, me);
        self.state(pos).store(RESERVED, Ordering::Release);
        self.set_tail(pos + frame_size(len, true) as u64);
        let first = self.count_one_more();
        Ok(Some(Slot { pos, len, first }))
    }

    /// Puts a small item (at most [`SMALL`] bytes) whole, under the producers' lock. Its
    /// frame is reserved as usual, `tail` moving past it before the copy, but with no owner
    /// ([`Owner::LOCK_HOLDER`]): whoever holds the producers' lock owns it, and a producer
    /// killed in here is found by the next one, which gets the lock as `OwnerDied` and buries
    /// the frame ([`Ring::bury_lock_holders`]). `None` when there is no room; else whether the
    /// queue was empty. Wakes sleeping consumers.
    pub(crate) fn put_small(&self, bytes: &[u8]) -> Result<Option<bool>, Corrupt> {
        debug_assert!(bytes.len() <= SMALL);
        let Some(pos) = self.begin_small(bytes.len())? else {
            return Ok(None);
        };
        self.mem.copy_in(self.payload(pos, false), bytes);
        let first = self.count_one_more();
        // No fence before the look at sleeping consumers: both are made under the producers'
        // lock, which a consumer passes through after counting itself asleep and before
        // looking for items (see `Queue::get_waiting`). Either it passed before this put took
        // the lock, and this sees it counted, or after, and it sees this frame.
        self.state(pos).store(READY, Ordering::Release);
        self.wake_consumers();
        Ok(Some(first))
    }

    /// [`Ring::put_small`] for the fast path of a put: the short case inline, the rest in
    /// a call.
    #[inline(always)]
    pub(crate) fn put_small_now(&self, bytes: &[u8]) -> Result<Option<bool>, Corrupt> {
        if self.put_short(bytes) {
            return Ok(Some(false));
        }
        self.put_small(bytes)
    }

    /// [`Ring::claim`] for a get: the short case inline, the rest in a call.
    #[inline(always)]
    pub(crate) fn claim_now(
        &self,
        me: Option<Owner>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Claim>, Corrupt> {
        if let Some(claim) = self.take_short(out) {
            return Ok(Some(claim));
        }
        self.claim(me, out)
    }

    /// The common case of [`Ring::put_small`], kept short: an item of at most [`SHORT`]
    /// bytes into an uncounted queue, with room at `tail` in this lap as the producers' own
    /// copies show it, and no look for a restart due (see [`RESTART`]). The frame is written
    /// whole (header `READY`), then `tail` moves past it: a producer killed before that move
    /// leaves bytes past `tail`, which nobody reads, and nothing else. Whether it was put; if
    /// not, the general path puts it. The caller holds the producers' lock.
    #[inline(always)]
    fn put_short(&self, bytes: &[u8]) -> bool {
        self.put_short_with(bytes.len(), |mem, at| mem.copy_in(at, bytes))
    }

    /// [`Ring::put_small_now`] for an item encoded into the start of a buffer of [`SHORT`]
    /// bytes, zeros after its `len` bytes: copied a whole word at a time.
    #[inline(always)]
    pub(crate) fn put_short_now(
        &self,
        short: &[u8; SHORT],
        len: usize,
    ) -> Result<Option<bool>, Corrupt> {
        if self.put_short_from(short, len) {
            return Ok(Some(false));
        }
        self.put_small(&short[..len])
    }

    /// [`Ring::put_short`] for an item encoded into the start of a buffer of [`SHORT`]
    /// bytes, zeros after its `len` bytes: whether it was put (if not, the general path
    /// puts it).
    #[inline(always)]
    pub(crate) fn put_short_from(&self, short: &[u8; SHORT], len: usize) -> bool {
        self.put_short_with(
            len,
            #[inline(always)]
            |mem, at| mem.copy_in_short(at, short, len),
        )
    }

    /// [`Ring::put_short`], copying the payload (`len` bytes, to `at`) with `copy`.
    #[inline(always)]
    fn put_short_with(&self, len: usize, copy: impl FnOnce(&Bytes, usize)) -> bool {
        if len > SHORT || self.counting() {
            return false;
        }
        let head = self.word(PUT_HEAD).load(Ordering::Relaxed);
        let tail = self.word(PUT_TAIL).load(Ordering::Relaxed);
        let size = frame_size(len, false) as u64;
        let left = (self.cap - (tail as usize & (self.cap - 1))) as u64;
        if !self.one_lap(head, tail)
            || size > left
            || tail + size - head > self.cap as u64
            || (self.cap as u64 - left >= RESTART
                && tail >= self.word(NEXT_LOOK).load(Ordering::Relaxed))
        {
            return false;
        }
        self.len_word(tail).store(len as u32, Ordering::Relaxed);
        copy(&self.mem, self.payload(tail, false));
        self.state(tail).store(READY, Ordering::Release);
        // No fence before the look at sleeping consumers: see `put_small`.
        self.set_tail(tail + size);
        self.wake_consumers();
        true
    }

    /// The first half of [`Ring::put_small`]: a frame reserved for the producers' lock
    /// holder, `tail` past it; where it is.
    fn begin_small(&self, len: usize) -> Result<Option<u64>, Corrupt> {
        let Some(pos) = self.room_for(frame_size(len, false))? else {
            return Ok(None);
        };
        // No owner recorded: the producers' lock holder owns it.
        self.len_word(pos).store(len as u32, Ordering::Relaxed);
        self.state(pos).store(RESERVED, Ordering::Release);
        // Early, so the line consumers poll moves while the payload is copied.
        self.set_tail(pos + frame_size(len, false) as u64);
        Ok(Some(pos))
    }

    /// The first half of a small put, for a test that kills a producer between the halves.
    #[cfg(test)]
    pub(crate) fn begin_small_for_tests(&self, len: usize) {
        assert!(self.begin_small(len).unwrap().is_some());
    }

    /// As [`Ring::begin_small_for_tests`], the item counted too: a producer killed after
    /// counting its item and before filling its frame.
    #[cfg(test)]
    pub(crate) fn begin_small_counted_for_tests(&self, len: usize) {
        self.begin_small_for_tests(len);
        self.count_one_more();
    }

    /// As [`Ring::begin_small_for_tests`], for a producer killed between moving `tail` and
    /// moving the producers' copy of it.
    #[cfg(test)]
    pub(crate) fn begin_small_torn_for_tests(&self, len: usize) {
        let before = self.word(PUT_TAIL).load(Ordering::Relaxed);
        self.begin_small_for_tests(len);
        self.word(PUT_TAIL).store(before, Ordering::Relaxed);
    }

    /// Marks `DEAD` the frame a producer killed inside [`Ring::put_small`] left `RESERVED`.
    /// The caller holds both locks, having found the producers' lock's owner dead: no live
    /// small put is under way.
    pub(crate) fn bury_lock_holders(&self) -> Result<(), Corrupt> {
        let (head, tail) = self.ends()?;
        let mut pos = head;
        while pos < tail {
            let (state, size) = self.frame_at(pos, tail)?;
            if state == RESERVED && self.owner(pos) == Owner::LOCK_HOLDER {
                self.state(pos).store(DEAD, Ordering::Release);
            }
            pos += size;
        }
        self.resync_put()
    }

    /// Where a frame of `size` bytes can go, padding the rest of the lap first if it does
    /// not fit there; `None` when there is no room (or `maxsize` items are in). The caller
    /// holds the producers' lock.
    fn room_for(&self, size: usize) -> Result<Option<u64>, Corrupt> {
        let maxsize = self.maxsize();
        if maxsize != 0 && self.items() >= maxsize {
            return Ok(None);
        }
        let (head, tail) = self.put_ends()?;
        let size = size as u64;
        let left = (self.cap - (tail as usize & (self.cap - 1))) as u64;
        let mut pad = if left < size { left } else { 0 };
        // (A pad's length must fit its header's `LEN` bits: for a ring of 2 GiB a restart
        // early in a lap would not.)
        if pad == 0
            && self.cap as u64 - left >= RESTART
            && size <= self.cap as u64 - left
            && left - HDR as u64 <= u64::from(LEN)
        {
            let look = self.word(NEXT_LOOK).load(Ordering::Relaxed);
            // (A look far ahead, written over by another process, would only stop the
            // restarts: a cost in pages, nothing worse.)
            if tail >= look || look - tail > RESTART {
                self.word(NEXT_LOOK)
                    .store(tail + RESTART, Ordering::Relaxed);
                if self.word(HEAD).load(Ordering::Acquire) == tail {
                    self.word(PUT_HEAD).store(tail, Ordering::Relaxed);
                    pad = left;
                }
            }
        }
        if tail + pad + size - head > self.cap as u64 {
            // Too little room as last seen: look where the consumers are now.
            let head = self.word(HEAD).load(Ordering::Acquire);
            if !self.one_lap(head, tail) {
                return Err(Corrupt(format!(
                    "head {head} and tail {tail} are not one lap"
                )));
            }
            self.word(PUT_HEAD).store(head, Ordering::Relaxed);
            if tail + pad + size - head > self.cap as u64 {
                return Ok(None);
            }
        }
        if pad >= HDR as u64 {
            self.len_word(tail)
                .store((pad as usize - HDR) as u32, Ordering::Relaxed);
            self.state(tail).store(PAD, Ordering::Release);
        }
        Ok(Some(tail + pad))
    }

    /// Counts an item put, if counting; whether the queue was empty.
    #[inline]
    fn count_one_more(&self) -> bool {
        // While a recount is owed the count may be off by the dead's one: every put counts
        // as the first (an extra ring of the doorbell costs a poller a look, a missed one a
        // wait for ever).
        self.counting() && {
            let before = self.word(ITEMS).fetch_add(1, Ordering::Relaxed);
            before == 0 || before & RECOUNT != 0
        }
    }

    /// Wakes consumers asleep for an item, if any. The caller has just made an item visible,
    /// either with a SeqCst write or under the producers' lock: a consumer counts itself
    /// asleep (SeqCst), passes through that lock, then looks for items, so either it sees
    /// the item or this sees it asleep.
    #[inline(always)]
    pub(crate) fn wake_consumers(&self) {
        if self.get_sleepers().load(Ordering::SeqCst) > 0 {
            self.wake_sleeping_consumers();
        }
    }

    /// [`Ring::wake_consumers`] once some are asleep.
    #[cold]
    #[inline(never)]
    fn wake_sleeping_consumers(&self) {
        self.published().fetch_add(1, Ordering::SeqCst);
        crate::sys::futex_wake_all(self.published());
        // (Counted before they silence the bell and look: either they see the item or this
        // sees them counted, and the ring lands after their silencing.)
        if self.bell_sleepers().load(Ordering::SeqCst) > 0 {
            crate::sys::ring(self.bell());
        }
    }

    /// Copies the payload into a reserved frame.
    ///
    /// # Panics
    /// If `bytes` is not the length reserved.
    pub(crate) fn fill(&self, slot: Slot, bytes: &[u8]) {
        assert_eq!(bytes.len(), slot.len);
        self.mem.copy_in(self.payload(slot.pos, true), bytes);
    }

    /// Makes a filled frame visible to consumers, waking any asleep. False if the frame was
    /// taken from us meanwhile (declared dead: cannot happen while we live, or written over
    /// by another process): the item is then lost.
    pub(crate) fn publish(&self, slot: Slot) -> bool {
        // SeqCst, against a consumer that counts itself asleep and then looks for a READY
        // frame: either it sees this frame, or this sees it asleep and wakes it.
        let ok = self
            .state(slot.pos)
            .compare_exchange(RESERVED, READY, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok();
        self.wake_consumers();
        ok
    }

    /// Takes the number of the next big item. The caller holds the producers' lock.
    pub(crate) fn next_big(&self) -> u64 {
        self.word(BIG_TAIL).fetch_add(1, Ordering::Relaxed)
    }

    /// Gives up a reserved frame that will never be filled: marked `DEAD`, it is passed over
    /// and reclaimed like a dead producer's.
    pub(crate) fn abandon(&self, slot: Slot) {
        if self
            .state(slot.pos)
            .compare_exchange(RESERVED, DEAD, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && self.counting()
        {
            self.count_one_less(Ordering::Relaxed);
        }
    }

    /// Moves `head` over frames whose bytes nobody needs any more; whether it moved. The
    /// caller holds the consumers' lock.
    pub(crate) fn reclaim(&self) -> Result<bool, Corrupt> {
        let (head, tail) = self.ends()?;
        let mut pos = head;
        while pos < tail {
            match self.frame_at(pos, tail)? {
                (DONE | DEAD | PAD, size) => pos += size,
                _ => break,
            }
        }
        if pos == head {
            return Ok(false);
        }
        self.word(HEAD).store(pos, Ordering::SeqCst);
        self.signal_room();
        Ok(true)
    }

    /// Tells producers asleep for room that some may have come back.
    /// The caller has just made room, either with a SeqCst write or under the consumers'
    /// lock (a producer counts itself asleep (SeqCst), passes through that lock, then looks
    /// for room: either it sees the room, or this sees it asleep).
    pub(crate) fn signal_room(&self) {
        if self.put_sleepers().load(Ordering::SeqCst) > 0 {
            self.freed().fetch_add(1, Ordering::SeqCst);
            crate::sys::futex_wake_all(self.freed());
        }
    }

    /// Claims the first `READY` frame for `me`, reclaiming first. The caller holds the
    /// consumers' lock.
    /// A small frame (see [`SMALL`]) is copied into `out` here, under the lock, and released
    /// at once (`head` moved past it, or, behind an unsettled frame, marked `DONE`): the
    /// claim then comes back `copied`, with nothing left to release.
    /// Without an owner (`me` is `None`) only a small frame is taken: `None` when the first
    /// `READY` frame is larger.
    pub(crate) fn claim(
        &self,
        me: Option<Owner>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Claim>, Corrupt> {
        let (mut head, mut tail) = self.get_ends()?;
        // Give room back now and then, not on every claim: a producer short of room
        // reclaims for itself, so this only keeps `head` from lagging far behind.
        let cursor = self.cursor(head, tail);
        if cursor - head > (self.cap / 4) as u64 {
            self.reclaim()?;
            (head, tail) = self.get_ends()?;
        }
        let mut pos = self.cursor(head, tail);
        // Whether every frame from `head` to `pos` is settled for good (done, dead or
        // padding): a small frame taken there moves `head` past itself instead of being
        // marked `DONE`, so a consumer keeping up writes no line a producer writes.
        let mut at_head = pos == head;
        // The first frame that may still become READY, and `at_head` there: the cursor stops
        // there.
        let mut unsettled = None;
        // Whether `tail` was read now, not taken from the consumers' copy.
        let mut fresh = false;
        loop {
            if pos >= tail {
                if fresh {
                    break;
                }
                fresh = true;
                #[cfg(test)]
                tests::before_fresh_tail();
                tail = self.get_fresh_ends()?.1;
                if let Some((at, was_at_head)) = unsettled.take() {
                    // Back to the first frame found unfinished, to look at it again: a frame
                    // that this read of `tail` shows, and the last did not, may be the same
                    // producer's next item, put once that one was finished (FIFO per
                    // producer). Every frame below a `tail` read before the look at an
                    // unfinished frame was reserved while that one already was, so by
                    // another producer, and may be taken first.
                    pos = at;
                    at_head = was_at_head;
                    continue;
                }
                if pos >= tail {
                    break;
                }
            }
            let (state, size) = self.frame_at(pos, tail)?;
            if state == READY {
                // The length read once, checked against the frame's extent before any copy.
                let word = self.len_word(pos).load(Ordering::Relaxed);
                let len = (word & LEN) as usize;
                let owned = word & OWNED != 0;
                if frame_size(len, owned) as u64 != size {
                    return Err(Corrupt(format!("frame at {pos} changed its length")));
                }
                let big = word & BIG != 0;
                let small = !big && len <= SMALL;
                if !small && !owned {
                    return Err(Corrupt(format!(
                        "frame at {pos} of {len} bytes records no owner"
                    )));
                }
                let taken = if small {
                    self.mem.copy_out(self.payload(pos, owned), len, out);
                    // The copy is done before anyone may reuse the bytes (Release). No fence
                    // before the look at sleeping producers below: a producer counts itself
                    // asleep, then passes through the consumers' lock before it looks for
                    // room again (see `Queue::make_room`), so either it sees this room or
                    // this sees it asleep.
                    if at_head {
                        self.word(HEAD).store(pos + size, Ordering::Release);
                    } else {
                        self.state(pos).store(DONE, Ordering::Release);
                    }
                    true
                } else {
                    let Some(me) = me else {
                        return Ok(None);
                    };
                    self.set_owner(pos, me);
                    self.state(pos)
                        .compare_exchange(READY, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                };
                if taken {
                    self.word(CURSOR).store(
                        unsettled.map_or(pos + size, |(at, _)| at),
                        Ordering::Relaxed,
                    );
                    if self.counting() {
                        self.count_one_less(Ordering::SeqCst);
                        if self.maxsize() != 0 {
                            self.signal_room();
                        }
                    }
                    if small && self.put_sleepers().load(Ordering::Relaxed) > 0 {
                        // A producer sleeps for room: give it some now.
                        if at_head {
                            self.signal_room();
                        } else {
                            self.reclaim()?;
                        }
                    }
                    return Ok(Some(Claim {
                        pos,
                        len,
                        owned,
                        big,
                        copied: small,
                    }));
                }
            }
            if state == RESERVED && unsettled.is_none() {
                unsettled = Some((pos, at_head));
            }
            at_head &= matches!(state, DONE | DEAD | PAD);
            pos += size;
        }
        self.word(CURSOR)
            .store(unsettled.map_or(tail, |(at, _)| at), Ordering::Relaxed);
        Ok(None)
    }

    /// The common case of [`Ring::claim`], kept short: in an uncounted queue, the frame at
    /// `head` (the cursor there too, so every frame before it is gone), `READY`, with no
    /// owner, of at most [`SHORT`] bytes: copied into `out` and `head` moved past it. `None`
    /// for anything else (including an empty queue), which the general path takes. The
    /// caller holds the consumers' lock.
    ///
    /// A consumer that has caught up with the producers [`CHASE`] times in a row, finding
    /// a frame or two each time and never an empty queue, pauses [`CHASE_PAUSE`] before it
    /// reads `tail` again: taking frames one at a time on a producer's heels pulls the line
    /// it is writing back and forth on every item, which halved the rate of a stream of
    /// `u64`s here. A consumer that finds the queue empty (a request and its answer, or a
    /// producer that stopped) never pauses, and one whose pause found the producers no
    /// further on (a thread that puts and gets in turn, which paused 2 µs on every get
    /// before) holds the next pauses off for a while ([`PAUSE_PAYS`]).
    #[inline(always)]
    fn take_short(&self, out: &mut Vec<u8>) -> Option<Claim> {
        self.take_short_with(|mem, at, len| mem.copy_out(at, len, out))
    }

    /// [`Ring::take_short`] into a buffer of [`SHORT`] bytes: how many it holds. For the
    /// fast path of a typed get, which decodes from there.
    #[inline(always)]
    pub(crate) fn take_short_into(&self, out: &mut [u8; SHORT]) -> Option<usize> {
        self.take_short_with(
            #[inline(always)]
            |mem, at, len| mem.copy_out_short(at, len, out),
        )
        .map(|claim| claim.len)
    }

    /// [`Ring::take_short`], copying the payload (at `at`, `len` bytes) with `copy`.
    #[inline(always)]
    fn take_short_with(&self, copy: impl FnOnce(&Bytes, usize, usize)) -> Option<Claim> {
        if self.counting() {
            return None;
        }
        let head = self.word(HEAD).load(Ordering::Acquire);
        let mut tail = self.word(GET_TAIL).load(Ordering::Relaxed);
        if self.word(CURSOR).load(Ordering::Relaxed) != head {
            return None;
        }
        if !(head < tail && self.one_lap(head, tail)) {
            let chase = self.locals.chase.load(Ordering::Relaxed) as i32;
            // Streaming, one frame at a time on the producers' heels: every take pulls the
            // line they are writing (and `tail`'s) back and forth. Let them get ahead, then
            // take whole lines. (Where `tail` was before: what the pause gained is told
            // from what was there already.)
            let before = (chase >= CHASE as i32).then(|| self.chase_pause());
            tail = self.word(TAIL).load(Ordering::Acquire);
            if !(head < tail && self.one_lap(head, tail)) {
                self.locals.chase.store(0, Ordering::Relaxed);
                return None;
            }
            let chase = before.map_or(chase, |before| self.paid(tail.saturating_sub(before)));
            self.locals
                .chase
                .store(chase.saturating_add(1) as u32, Ordering::Relaxed);
            self.word(GET_TAIL).store(tail, Ordering::Relaxed);
        }
        let left = (self.cap - (head as usize & (self.cap - 1))) as u64;
        if left < HDR as u64 || self.state(head).load(Ordering::Acquire) != READY {
            return None;
        }
        let word = self.len_word(head).load(Ordering::Relaxed);
        let len = word as usize;
        let size = frame_size(len, false) as u64;
        if len > SHORT || size > left || head + size > tail {
            // (An owned or big frame has a flag bit set, far above `SHORT`.)
            return None;
        }
        copy(&self.mem, self.payload(head, false), len);
        // The copy is done before anyone may reuse the bytes (Release); no fence before the
        // look at sleeping producers: see `claim`.
        self.word(HEAD).store(head + size, Ordering::Release);
        self.word(CURSOR).store(head + size, Ordering::Relaxed);
        if self.put_sleepers().load(Ordering::Relaxed) > 0 {
            self.signal_room();
        }
        Some(Claim {
            pos: head,
            len,
            owned: false,
            big: false,
            copied: true,
        })
    }

    /// Spins for [`CHASE_PAUSE`] (far below a sleep's cost here), out of line: the short
    /// path that calls it is inlined everywhere. Where `tail` was as it began.
    #[cold]
    #[inline(never)]
    fn chase_pause(&self) -> u64 {
        let before = self.word(TAIL).load(Ordering::Relaxed);
        #[cfg(test)]
        tests::during_pause();
        let until = std::time::Instant::now() + CHASE_PAUSE;
        while std::time::Instant::now() < until {
            for _ in 0..8 {
                std::hint::spin_loop();
            }
        }
        before
    }

    /// After a pause of [`Ring::take_short`] in which the producers went `ahead` bytes on: the
    /// chase count to carry on from (below zero, for a time without pauses, if it did not
    /// pay; see [`PAUSE_PAYS`]).
    #[cold]
    #[inline(never)]
    fn paid(&self, ahead: u64) -> i32 {
        let quiet = &self.locals.quiet;
        if ahead >= PAUSE_PAYS {
            quiet.store(QUIET_MIN, Ordering::Relaxed);
            return CHASE as i32;
        }
        let now = quiet.load(Ordering::Relaxed).clamp(QUIET_MIN, QUIET_MAX);
        quiet.store((now * 2).min(QUIET_MAX), Ordering::Relaxed);
        -(now as i32)
    }

    /// Where to start looking for a `READY` frame: the cursor if it lies between `head` and
    /// `tail` (a frame boundary is checked as frames are read from it), else `head`.
    #[inline]
    fn cursor(&self, head: u64, tail: u64) -> u64 {
        let cursor = self.word(CURSOR).load(Ordering::Relaxed);
        if (head..=tail).contains(&cursor) && cursor.is_multiple_of(8) {
            cursor
        } else {
            head
        }
    }

    /// Whether `items` is kept: for a bounded queue, or once someone waits on the queue's
    /// descriptor (whose doorbell follows empty/non-empty). Read under a lock: the arming
    /// recounts under both.
    #[inline]
    pub(crate) fn counting(&self) -> bool {
        self.maxsize() != 0 || self.word32(POLLERS).load(Ordering::Relaxed) != 0
    }

    /// Whether some frame is `READY` now. The caller holds the consumers' lock.
    pub(crate) fn any_ready(&self) -> Result<bool, Corrupt> {
        let (head, tail) = self.ends()?;
        let mut pos = head;
        while pos < tail {
            let (state, size) = self.frame_at(pos, tail)?;
            if state == READY {
                return Ok(true);
            }
            pos += size;
        }
        Ok(false)
    }

    /// Copies a claimed frame's payload into `out` (resized to fit).
    pub(crate) fn read(&self, claim: Claim, out: &mut Vec<u8>) {
        self.mem
            .copy_out(self.payload(claim.pos, claim.owned), claim.len, out);
    }

    /// Gives a claimed frame's bytes back, to be reclaimed.
    pub(crate) fn release(&self, claim: Claim) {
        let _ = self.state(claim.pos).compare_exchange(
            CLAIMED,
            DONE,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
        if claim.big {
            // Its room in the side channel came back as it was taken.
            self.signal_room();
        } else if self.put_sleepers().load(Ordering::SeqCst) > 0 {
            self.signal_room();
        }
    }

    /// Marks `DEAD` every frame whose owner died `RESERVED` (mid-put) or `CLAIMED`
    /// (mid-get), then reclaims; whether any room came back or any frame was buried. Asks
    /// the kernel about each owner, so it is for a process that has waited a while. The
    /// caller holds the consumers' lock.
    pub(crate) fn bury_dead(&self) -> Result<bool, Corrupt> {
        let (head, tail) = self.ends()?;
        let mut buried = false;
        let mut pos = head;
        while pos < tail {
            let (state, size) = self.frame_at(pos, tail)?;
            if matches!(state, RESERVED | CLAIMED)
                && self.owner(pos).is_dead()
                && self
                    .state(pos)
                    .compare_exchange(state, DEAD, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                buried = true;
                if state == RESERVED && self.counting() {
                    self.count_one_less(Ordering::Relaxed);
                }
            }
            pos += size;
        }
        Ok(self.reclaim()? | buried)
    }

    /// Sets `items` to the frames `RESERVED` or `READY`, after a process died holding a
    /// lock. The caller holds both locks.
    pub(crate) fn recount(&self) -> Result<(), Corrupt> {
        let items = self.count()?;
        self.word(ITEMS).store(items, Ordering::Relaxed);
        Ok(())
    }

    /// The frames `RESERVED` or `READY` now, counted. The caller holds the consumers' lock.
    pub(crate) fn count(&self) -> Result<u64, Corrupt> {
        let (head, tail) = self.ends()?;
        let mut pos = head;
        let mut items = 0;
        while pos < tail {
            let (state, size) = self.frame_at(pos, tail)?;
            items += u64::from(matches!(state, RESERVED | READY));
            pos += size;
        }
        Ok(items)
    }

    /// Drops every frame, after corruption: `head` jumps to `tail`. The caller holds both
    /// locks. Producers still copying into a dropped frame may write over newer frames:
    /// after another process has written garbage into the ring, items in flight are lost,
    /// but nothing worse happens.
    pub(crate) fn reset(&self) {
        let tail = self.word(TAIL).load(Ordering::Acquire);
        // A `tail` written over with a position no ring reaches (with room to spare below
        // the bound of `one_lap`) starts again from 0.
        let tail = if tail <= 1 << 61 { tail - tail % 8 } else { 0 };
        self.word(TAIL).store(tail, Ordering::Release);
        self.word(HEAD).store(tail, Ordering::Release);
        self.word(PUT_TAIL).store(tail, Ordering::Relaxed);
        self.word(PUT_HEAD).store(tail, Ordering::Relaxed);
        self.word(GET_TAIL).store(tail, Ordering::Relaxed);
        self.word(CURSOR).store(tail, Ordering::Relaxed);
        self.word(ITEMS).store(0, Ordering::Relaxed);
        self.signal_room();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ring in plain (8-aligned) memory, for tests in one process.
    pub(crate) struct TestRing {
        _mem: Vec<u64>,
        pub(crate) ring: Ring,
    }

    pub(crate) fn test_ring(cap: usize, maxsize: u64) -> TestRing {
        let mut mem = vec![0u64; (CONTROL + cap) / 8];
        let base = std::ptr::NonNull::new(mem.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `mem` is 8-aligned, `CONTROL + cap` bytes, and lives as long as the ring
        // (both in `TestRing`; the Vec's buffer does not move when the Vec does).
        let bytes = unsafe { Bytes::new(base, CONTROL + cap) };
        let config = Config {
            maxsize,
            in_ring: cap / 8,
        };
        let ring = Ring::new(bytes, cap, Some(config), crate::sys::doorbell().unwrap());
        ring.word32(POLLERS).store(1, Ordering::Relaxed); // keep `items`, to check it
        TestRing { ring, _mem: mem }
    }

    fn me() -> Owner {
        Owner::me()
    }

    thread_local! {
        /// Run once, by the next [`Ring::claim`] of this thread, just before it reads `tail`
        /// afresh: what other processes do at that moment.
        static BEFORE_FRESH_TAIL: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    thread_local! {
        /// Run once, by the next chase pause of this thread: what a streaming producer does
        /// meanwhile.
        static DURING_PAUSE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    pub(super) fn during_pause() {
        if let Some(then) = DURING_PAUSE.with(|hook| hook.borrow_mut().take()) {
            then();
        }
    }

    pub(super) fn before_fresh_tail() {
        if let Some(then) = BEFORE_FRESH_TAIL.with(|hook| hook.borrow_mut().take()) {
            then();
        }
    }

    /// FIFO per producer: a consumer that found a frame still being written (`RESERVED`)
    /// takes no frame that only a later read of `tail` shows it, for that may be the same
    /// producer's next item, put after the first was finished. (Seen in the 2-to-2 soak as
    /// a consumer getting `n + 1` before `n`.)
    #[test]
    fn a_frame_seen_unfinished_is_not_overtaken_by_its_producers_next_one() {
        let t = std::rc::Rc::new(test_ring(4096, 0));
        let r = &t.ring;
        let first = r.reserve_small(8, me()).unwrap().unwrap();
        r.fill(first, b"first!!!");
        assert!(take(r, me()).is_none(), "the frame is not finished");
        // Between the consumer's look at the unfinished frame and its next read of `tail`,
        // the producer finishes that put and makes its next one.
        let producer = t.clone();
        BEFORE_FRESH_TAIL.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                assert!(producer.ring.publish(first));
                assert!(producer.ring.put_small(b"second!!").unwrap().is_some());
            }))
        });
        let got: Vec<_> = (0..3).filter_map(|_| take(r, me())).collect();
        assert!(
            BEFORE_FRESH_TAIL.with(|hook| hook.borrow().is_none()),
            "the claim read tail"
        );
        assert_eq!(got, [b"first!!!".to_vec(), b"second!!".to_vec()]);
    }

    impl Ring {
        pub(crate) fn reserve_small(&self, len: usize, me: Owner) -> Result<Option<Slot>, Corrupt> {
            self.reserve(len, false, me)
        }
    }

    /// Takes the next item whole, as a `get` does: copied under the claim if small, else
    /// read and released.
    fn take(r: &Ring, who: Owner) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let claim = r.claim(Some(who), &mut out).unwrap()?;
        if !claim.copied {
            r.read(claim, &mut out);
            r.release(claim);
        }
        Some(out)
    }

    #[test]
    fn a_frame_goes_round_the_ring() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        for round in 0..1000u32 {
            // Small items (put whole) and larger ones (reserved, filled, published).
            let payload = round.to_le_bytes().repeat(round as usize % 50 * 7);
            r.reclaim().unwrap(); // as a producer short of room does
            if payload.len() <= SMALL {
                assert!(r.put_small(&payload).unwrap().is_some());
            } else {
                let slot = r.reserve_small(payload.len(), me()).unwrap().unwrap();
                r.fill(slot, &payload);
                assert!(r.publish(slot));
            }
            assert_eq!(take(r, me()).unwrap(), payload);
        }
        assert!(take(r, me()).is_none());
    }

    #[test]
    fn a_reserved_frame_is_passed_over_and_holds_its_room() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        let slow = r.reserve_small(8, me()).unwrap().unwrap();
        assert!(r.put_small(b"fastfast").unwrap().is_some());
        assert_eq!(take(r, me()).unwrap(), b"fastfast");
        assert!(take(r, me()).is_none());
        r.fill(slow, b"slowslow");
        r.publish(slow);
        assert_eq!(take(r, me()).unwrap(), b"slowslow");
    }

    /// Puts `payload` (small whole, larger reserved, filled and published) and takes it back.
    fn round_trip(r: &Ring, payload: &[u8]) {
        if payload.len() <= SMALL {
            assert!(r.put_small(payload).unwrap().is_some());
        } else {
            let slot = r.reserve_small(payload.len(), me()).unwrap().unwrap();
            r.fill(slot, payload);
            assert!(r.publish(slot));
        }
        assert_eq!(take(r, me()).unwrap(), payload);
    }

    #[test]
    fn a_ring_kept_empty_starts_again_at_the_top_of_a_lap() {
        let cap = 1 << 20;
        let t = test_ring(cap, 0);
        let r = &t.ring;
        let mut deepest = 0;
        for i in 0..100_000u32 {
            round_trip(r, &i.to_le_bytes().repeat(3));
            let (head, tail) = r.ends().unwrap();
            assert_eq!(head, tail);
            deepest = deepest.max(tail % cap as u64);
        }
        // 100,000 frames of 16 bytes went through, 1.5 MB: without the restart they would
        // have gone round the whole ring; with it they never go much past 64 KiB into it.
        assert!(
            deepest <= RESTART + 64,
            "frames went {deepest} bytes into the ring"
        );
        assert!(
            r.ends().unwrap().1 > cap as u64,
            "the positions still only grow"
        );
    }

    #[test]
    fn a_two_gib_ring_restarts_only_where_its_pad_fits_a_header() {
        // (2 GiB of zeros: the pages a test touches are the only ones mapped.)
        let cap = 1 << 31;
        let t = test_ring(cap, 0);
        let r = &t.ring;
        for i in 0..20_000u32 {
            round_trip(r, &i.to_le_bytes());
        }
        let tail = r.ends().unwrap().1;
        assert!(tail > RESTART, "went round without a corrupt frame");
    }

    #[test]
    fn a_ring_never_empty_goes_round_as_before() {
        let cap = 1 << 18;
        let t = test_ring(cap, 0);
        let r = &t.ring;
        // One frame always left in: the producer looks, finds it not empty, and goes on.
        assert!(r.put_small(b"first!!!").unwrap().is_some());
        let mut deepest = 0;
        for i in 0..50_000u64 {
            assert!(r.put_small(&i.to_le_bytes()).unwrap().is_some());
            let got = take(r, me()).unwrap();
            assert!(got.len() == 8, "{got:?}");
            deepest = deepest.max(r.ends().unwrap().1 % cap as u64);
        }
        assert!(
            deepest > cap as u64 / 2,
            "went only {deepest} bytes into the ring"
        );
    }

    #[test]
    fn large_items_copy_whole_at_every_length_and_alignment() {
        let t = test_ring(1 << 16, 0);
        let r = &t.ring;
        for len in (0..3000).chain([4095, 4096, 4097, 8191, 20_000]) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            r.reclaim().unwrap();
            round_trip(r, &payload);
        }
    }

    #[test]
    fn the_in_ring_limit_is_clamped_to_what_is_safe() {
        let t = test_ring(1 << 16, 0);
        let r = &t.ring;
        assert_eq!(r.in_ring_limit(), (1 << 16) / 8);
        r.word(IN_RING).store(u64::MAX, Ordering::Relaxed);
        assert_eq!(r.in_ring_limit(), (1 << 16) / 2, "at most half the ring");
        r.word(IN_RING).store(0, Ordering::Relaxed);
        assert_eq!(
            r.in_ring_limit(),
            frame_size(SMALL, true),
            "a small item always fits"
        );
    }

    #[test]
    fn maxsize_bounds_items_not_bytes() {
        let t = test_ring(4096, 2);
        let r = &t.ring;
        assert!(r.reserve_small(1, me()).unwrap().is_some());
        assert!(r.put_small(b"x").unwrap().is_some());
        assert!(r.reserve_small(1, me()).unwrap().is_none());
        assert!(r.put_small(b"y").unwrap().is_none());
    }

    #[test]
    fn garbage_in_a_header_is_reported_not_followed() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        let slot = r.reserve_small(8, me()).unwrap().unwrap();
        r.fill(slot, b"12345678");
        r.publish(slot);
        r.len_word(slot.pos).store(LEN | OWNED, Ordering::Relaxed);
        assert!(r.claim(Some(me()), &mut Vec::new()).is_err());
        r.reset();
        // A frame too big to be copied under the lock, yet with no owner recorded.
        let slot = r.reserve_small(SMALL + 8, me()).unwrap().unwrap();
        r.fill(slot, &[1; SMALL + 8]);
        r.publish(slot);
        r.len_word(slot.pos)
            .store((SMALL + 24) as u32, Ordering::Relaxed);
        assert!(r.claim(Some(me()), &mut Vec::new()).is_err());
        r.reset();
        assert!(r.put_small(b"abcdefgh").unwrap().is_some());
        assert_eq!(take(r, me()).unwrap(), b"abcdefgh");
    }

    /// Frames taken, reclaimed or not, as a consumer keeping up takes them: `head` moves
    /// past each at once, and the producers see the room when their copy of `head` runs out.
    #[test]
    fn a_consumer_keeping_up_gives_room_back_as_it_takes() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        for i in 0..1000u32 {
            let item = i.to_le_bytes();
            assert!(r.put_small(&item).unwrap().is_some(), "no room at {i}");
            assert_eq!(take(r, me()).unwrap(), item);
            assert_eq!(
                r.word(HEAD).load(Ordering::Relaxed),
                r.word(TAIL).load(Ordering::Relaxed)
            );
        }
    }

    /// Every word a side keeps for itself (its copies of `head` and `tail`, the cursor) and
    /// the shared ends, scribbled over with any value: the ring reports corruption or goes
    /// on, never panics, and works again after a reset.
    #[test]
    fn scribbled_positions_are_reported_or_survived() {
        let values = [
            0,
            3,
            4,
            8,
            4096,
            1 << 20,
            1 << 40,
            1 << 63,
            u64::MAX - 7,
            u64::MAX,
        ];
        // Each word alone, and each with the cursor sent back to 0 (so that a consumer
        // starts from `head`, whatever it holds).
        let cases = [PUT_TAIL, PUT_HEAD, GET_TAIL, CURSOR, HEAD, TAIL]
            .into_iter()
            .flat_map(|word| [(word, false), (word, true)]);
        for (word, cursor_too) in cases {
            for value in values {
                let t = test_ring(4096, 0);
                let r = &t.ring;
                for item in [&b"one"[..], b"two", b"three"] {
                    assert!(r.put_small(item).unwrap().is_some());
                }
                assert_eq!(take(r, me()).unwrap(), b"one");
                r.word(word).store(value, Ordering::Relaxed);
                if cursor_too {
                    r.word(CURSOR).store(0, Ordering::Relaxed);
                }
                let mut corrupt = false;
                for _ in 0..4 {
                    corrupt |= r.put_small(b"four").is_err();
                    corrupt |= r.claim(Some(me()), &mut Vec::new()).is_err();
                }
                if corrupt {
                    r.reset();
                }
                // Whatever came of it, the ring works from here on.
                r.reset();
                assert!(r.put_small(b"after").unwrap().is_some(), "{word}={value}");
                assert_eq!(take(r, me()).unwrap(), b"after", "{word}={value}");
                assert!(take(r, me()).is_none());
            }
        }
    }

    /// A frame with no owner recorded, at the very end of the ring, whose length word
    /// another process then marks as owned: asking for its owner reads nothing past the ring.
    #[test]
    fn an_owner_flag_set_on_the_last_frame_sends_no_read_past_the_ring() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        // Fill the lap up to its last 8 bytes, then half-put an empty small item there.
        // Three frames of HDR + SMALL bytes and one of HDR + 984: 4088 bytes.
        for len in [SMALL, SMALL, SMALL, 4096 - 8 - 4 * HDR - 3 * SMALL] {
            assert!(r.put_small(&vec![0u8; len]).unwrap().is_some());
        }
        let last = r.word(TAIL).load(Ordering::Relaxed);
        assert_eq!(last % 4096, 4096 - 8);
        r.begin_small_for_tests(0);
        r.len_word(last).store(OWNED, Ordering::Relaxed);
        assert_eq!(r.owner(last), Owner::LOCK_HOLDER);
        let _ = r.bury_dead();
        let _ = r.bury_lock_holders();
    }

    /// A producer killed between moving `tail` and the producers' copy of it: whoever takes
    /// the lock over copies `tail` again, so the next frame goes after the dead one's.
    #[test]
    fn a_tail_moved_without_the_producers_copy_is_copied_again() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        assert!(r.put_small(b"before").unwrap().is_some());
        r.begin_small_torn_for_tests(100);
        let dead_end = r.word(TAIL).load(Ordering::Relaxed);
        // What a producer taking the lock from the dead does (see `queue::locked`), then the
        // repair that follows.
        r.resync_put().unwrap();
        assert!(r.put_small(b"after").unwrap().is_some());
        assert_eq!(
            r.word(TAIL).load(Ordering::Relaxed),
            dead_end + frame_size(5, false) as u64,
            "the new frame goes after the dead one's"
        );
        r.bury_lock_holders().unwrap();
        assert_eq!(take(r, me()).unwrap(), b"before");
        assert_eq!(take(r, me()).unwrap(), b"after");
        assert!(take(r, me()).is_none());
    }

    #[test]
    fn a_dead_owners_frames_are_buried() {
        let t = test_ring(4096, 0);
        let r = &t.ring;
        let dead = Owner::dead_for_tests();
        let a = r.reserve_small(8, dead).unwrap().unwrap();
        // Larger than SMALL: claimed and copied outside the lock, so an owner is recorded.
        let b = r.reserve_small(SMALL + 1, me()).unwrap().unwrap();
        r.fill(b, &[7; SMALL + 1]);
        r.publish(b);
        let claim = r.claim(Some(dead), &mut Vec::new()).unwrap().unwrap();
        assert!(!claim.copied);
        assert_eq!(r.items(), 1, "the dead producer's frame still counts");
        assert!(r.bury_dead().unwrap());
        assert_eq!(r.items(), 0);
        // `a` (mid-put) and the claim (mid-get) are gone, and their room is back.
        assert!(!r.publish(a));
        let (head, tail) = r.ends().unwrap();
        assert_eq!(head, tail);
    }

    mod model {
        use std::collections::VecDeque;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Reserve(usize),
            PutSmall(usize),
            Publish(usize),
            Claim,
            Release(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0usize..1800).prop_map(Op::Reserve),
                (0usize..=SMALL).prop_map(Op::PutSmall),
                any::<usize>().prop_map(Op::Publish),
                Just(Op::Claim),
                any::<usize>().prop_map(Op::Release),
            ]
        }

        /// A frame as the model sees it: id, payload, state, and its slot or claim.
        type ModelFrame = (u64, Vec<u8>, St, Option<Slot>, Option<Claim>);

        /// What the model says a frame is.
        #[derive(Debug, Clone, PartialEq)]
        enum St {
            Reserved,
            Ready,
            Claimed,
        }

        /// Where the `i`-th (modulo their number) of the model's frames in `state` is.
        fn nth_in(frames: &VecDeque<ModelFrame>, state: &St, i: usize) -> Option<usize> {
            let matching: Vec<usize> = frames
                .iter()
                .enumerate()
                .filter(|(_, f)| f.2 == *state)
                .map(|(k, _)| k)
                .collect();
            matching.get(i % matching.len().max(1)).copied()
        }

        /// Whether a frame for `len` bytes fits in the 4 KiB test ring now, padding included.
        fn fits(r: &Ring, len: usize, owned: bool) -> bool {
            let (head, tail) = r.ends().unwrap();
            let size = frame_size(len, owned) as u64;
            let left = 4096 - tail % 4096;
            let needed = size + if left < size { left } else { 0 };
            tail - head + needed <= 4096
        }

        /// Any interleaving of reserve/publish/claim/release agrees with a model: a claim
        /// takes the oldest published frame in reservation order, with the bytes put in it;
        /// reserving fails only when the bytes in use leave no room; and once everything is
        /// released, the whole ring is free again. `counted`: a ring that keeps its item
        /// count (every path the general one); else an uncounted ring, whose puts and gets
        /// take the short paths where they can, as the queue's do.
        fn agrees_with_the_model(ops: Vec<Op>, counted: bool) -> Result<(), TestCaseError> {
            let t = test_ring(4096, 0);
            let r = &t.ring;
            if !counted {
                r.word32(POLLERS).store(0, Ordering::Relaxed);
            }
            let me = Owner::me();
            // Frames in reservation order: (id, payload, state, slot or claim).
            let mut frames: VecDeque<ModelFrame> = VecDeque::new();
            let mut next_id = 0u64;
            for op in ops {
                match op {
                    Op::Reserve(len) => {
                        let payload: Vec<u8> =
                            (0..len).map(|i| (next_id as usize + i) as u8).collect();
                        let fits = fits(r, len, true);
                        match r.reserve_small(len, me).unwrap() {
                            Some(slot) => {
                                prop_assert!(fits);
                                r.fill(slot, &payload);
                                frames.push_back((
                                    next_id,
                                    payload,
                                    St::Reserved,
                                    Some(slot),
                                    None,
                                ));
                                next_id += 1;
                            }
                            None => prop_assert!(!fits, "refused {} bytes with room", len),
                        }
                    }
                    Op::PutSmall(len) => {
                        let payload: Vec<u8> =
                            (0..len).map(|i| (next_id as usize + i) as u8).collect();
                        let fits = fits(r, len, false);
                        match if counted {
                            r.put_small(&payload)
                        } else {
                            r.put_small_now(&payload)
                        }
                        .unwrap()
                        {
                            Some(_) => {
                                prop_assert!(fits);
                                frames.push_back((next_id, payload, St::Ready, None, None));
                                next_id += 1;
                            }
                            None => prop_assert!(!fits, "refused {} bytes with room", len),
                        }
                    }
                    Op::Publish(i) => {
                        if let Some(k) = nth_in(&frames, &St::Reserved, i) {
                            prop_assert!(r.publish(frames[k].3.unwrap()));
                            frames[k].2 = St::Ready;
                        }
                    }
                    Op::Claim => {
                        let expected = frames.iter().position(|f| f.2 == St::Ready);
                        let mut copied = Vec::new();
                        let got = if counted {
                            r.claim(Some(me), &mut copied)
                        } else {
                            r.claim_now(Some(me), &mut copied)
                        }
                        .unwrap();
                        match (expected, got) {
                            (None, None) => {}
                            (Some(k), Some(claim)) if claim.copied => {
                                // Small: copied and released under the claim.
                                prop_assert_eq!(&copied, &frames[k].1);
                                frames.remove(k);
                            }
                            (Some(k), Some(claim)) => {
                                let mut out = Vec::new();
                                r.read(claim, &mut out);
                                prop_assert_eq!(&out, &frames[k].1);
                                frames[k].2 = St::Claimed;
                                frames[k].4 = Some(claim);
                            }
                            (e, g) => prop_assert!(false, "model {:?}, ring {:?}", e, g),
                        }
                    }
                    Op::Release(i) => {
                        if let Some(k) = nth_in(&frames, &St::Claimed, i) {
                            r.release(frames[k].4.unwrap());
                            frames.remove(k);
                        }
                    }
                }
                let live = frames.iter().filter(|f| f.2 != St::Claimed).count() as u64;
                prop_assert_eq!(r.items(), if counted { live } else { 0 });
            }
            // Drain: publish all, claim and release all, in model order.
            for f in frames.iter_mut().filter(|f| f.2 == St::Reserved) {
                prop_assert!(r.publish(f.3.unwrap()));
                f.2 = St::Ready;
            }
            for f in frames.iter().filter(|f| f.2 == St::Claimed) {
                r.release(f.4.unwrap());
            }
            for f in frames.iter().filter(|f| f.2 == St::Ready) {
                let mut out = Vec::new();
                let claim = r
                    .claim(Some(me), &mut out)
                    .unwrap()
                    .expect("a published frame");
                if !claim.copied {
                    r.read(claim, &mut out);
                    r.release(claim);
                }
                prop_assert_eq!(&out, &f.1);
            }
            prop_assert!(r.claim(Some(me), &mut Vec::new()).unwrap().is_none());
            r.reclaim().unwrap();
            let (head, tail) = r.ends().unwrap();
            prop_assert_eq!(head, tail);
            prop_assert_eq!(r.items(), 0);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_ring_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..300)) {
                agrees_with_the_model(ops, true)?;
            }

            #[test]
            fn the_uncounted_ring_on_its_short_paths_agrees_with_a_model(
                ops in proptest::collection::vec(op(), 1..300)
            ) {
                agrees_with_the_model(ops, false)?;
            }
        }
    }

    #[test]
    fn a_count_owed_a_recount_keeps_its_mark_and_rings_for_every_put() {
        let t = test_ring(CAP_FOR_COUNT, 1);
        let r = &t.ring;
        assert!(
            r.put_small(b"a").unwrap().unwrap(),
            "the first item is first"
        );
        r.owe_recount();
        assert!(r.recount_owed());
        assert_eq!(r.items(), 1, "the mark is not a count");
        assert!(r.count_one_more(), "every put counts as first while owed");
        r.count_one_less(Ordering::Relaxed);
        r.count_one_less(Ordering::Relaxed);
        r.count_one_less(Ordering::Relaxed);
        assert_eq!(r.items(), 0, "never below 0");
        assert!(r.recount_owed(), "the mark stays until a recount");
        r.recount().unwrap();
        assert!(!r.recount_owed());
        assert_eq!(r.items(), 1, "the frame put above");
    }

    #[test]
    fn a_consumer_chasing_its_producer_frame_by_frame_pauses_and_one_finding_nothing_does_not() {
        let t = std::rc::Rc::new(test_ring(4096, 0));
        let r = &t.ring;
        r.word32(POLLERS).store(0, Ordering::Relaxed); // uncounted: the short paths
        let chase = || r.locals.chase.load(Ordering::Relaxed) as i32;
        let mut out = Vec::new();
        for i in 0..CHASE as u8 {
            assert!(r.put_small_now(&[i]).unwrap().is_some());
            assert!(r.take_short(&mut out).is_some());
            assert_eq!(out, [i]);
        }
        assert_eq!(chase(), CHASE as i32);
        // A pause that pays: the producers put whole lines meanwhile.
        assert!(r.put_small_now(&[0]).unwrap().is_some());
        let producer = std::rc::Rc::clone(&t);
        DURING_PAUSE.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                for i in 1..40u8 {
                    assert!(producer.ring.put_small_now(&[i]).unwrap().is_some());
                }
            }))
        });
        let before = std::time::Instant::now();
        assert!(r.take_short(&mut out).is_some());
        assert!(before.elapsed() >= CHASE_PAUSE, "paused before looking");
        assert!(
            DURING_PAUSE.with(|hook| hook.borrow().is_none()),
            "the producer ran"
        );
        assert_eq!(out, [0]);
        assert_eq!(chase(), CHASE as i32 + 1, "the chase goes on");
        for i in 1..40u8 {
            assert!(r.take_short(&mut out).is_some());
            assert_eq!(out, [i]);
        }
        assert!(r.take_short(&mut out).is_none(), "empty");
        assert_eq!(chase(), 0, "finding nothing ends the chase");
    }

    #[test]
    fn a_pause_that_finds_the_producer_no_further_on_holds_the_next_ones_off() {
        // A put and a get in turn by one thread: each get finds the one frame just put.
        let t = test_ring(4096, 0);
        let r = &t.ring;
        r.word32(POLLERS).store(0, Ordering::Relaxed); // uncounted: the short paths
        let chase = || r.locals.chase.load(Ordering::Relaxed) as i32;
        let mut out = Vec::new();
        let mut pair = |i: u8| {
            assert!(r.put_small_now(&[i]).unwrap().is_some());
            assert!(r.take_short(&mut out).is_some());
            assert_eq!(out, [i]);
        };
        for i in 0..=CHASE as u8 {
            pair(i); // the last one paused, and found one frame
        }
        assert_eq!(chase(), 1 - QUIET_MIN as i32, "no pause for a while");
        for i in 0..QUIET_MIN as u8 + CHASE as u8 - 1 {
            pair(i);
        }
        assert_eq!(chase(), CHASE as i32, "due again");
        pair(0); // paused again, to no avail: held off twice as long
        assert_eq!(chase(), 1 - 2 * QUIET_MIN as i32);
        for _ in 0..20 {
            r.locals.chase.store(CHASE, Ordering::Relaxed);
            pair(0);
        }
        assert_eq!(chase(), 1 - QUIET_MAX as i32, "held off at most this long");
    }

    #[test]
    fn a_pause_pays_for_what_was_put_during_it_not_for_what_was_there() {
        // A few puts of 64 bytes, then as many gets, by one thread: more than `PAUSE_PAYS`
        // bytes wait at each pause, none of them put during it.
        let t = test_ring(4096, 0);
        let r = &t.ring;
        r.word32(POLLERS).store(0, Ordering::Relaxed); // uncounted: the short paths
        let item = [7u8; SHORT];
        let batch = PAUSE_PAYS as usize / frame_size(SHORT, false) + 1;
        let mut out = Vec::new();
        for _ in 0..CHASE + 1 {
            for _ in 0..batch {
                assert!(r.put_small_now(&item).unwrap().is_some());
            }
            for _ in 0..batch {
                assert!(r.take_short(&mut out).is_some());
            }
        }
        assert_eq!(
            r.locals.chase.load(Ordering::Relaxed) as i32,
            1 - QUIET_MIN as i32,
            "the pause did not pay"
        );
    }

    const CAP_FOR_COUNT: usize = 4096;

    /// Another process may write anything anywhere in the region at any moment. Whatever it
    /// writes between any two operations, every operation gives a value or an error (never a
    /// panic, never a read or write outside the region), and after a reset, which is what a
    /// queue does on an error, the ring works again.
    mod hostile {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            PutSmall(usize),
            /// A put by the queue's fast path (the short path where it applies).
            PutNow(usize),
            /// A get by the queue's fast path (the short path where it applies).
            TakeNow,
            /// The item count kept or not (the short paths run only without).
            Counting(bool),
            /// Reserve, fill and publish a frame copied outside the lock.
            Put(usize),
            /// Claim (with an owner or without), then read and release.
            Take(bool),
            Reclaim,
            BuryDead,
            BuryLockHolders,
            Count,
            AnyReady,
            Resync,
            /// A word of the region written over (8-aligned offset, value).
            Scribble(usize, u64),
            /// A half-word written over (4-aligned offset, value): states and lengths.
            Scribble32(usize, u32),
        }

        const CAP: usize = 4096;

        fn op() -> impl Strategy<Value = Op> {
            let words = (CONTROL + CAP) / 8;
            prop_oneof![
                (0usize..=SMALL).prop_map(Op::PutSmall),
                (0usize..80).prop_map(Op::PutNow),
                Just(Op::TakeNow),
                any::<bool>().prop_map(Op::Counting),
                (SMALL + 1..1800usize).prop_map(Op::Put),
                any::<bool>().prop_map(Op::Take),
                Just(Op::Reclaim),
                Just(Op::BuryDead),
                Just(Op::BuryLockHolders),
                Just(Op::Count),
                Just(Op::AnyReady),
                Just(Op::Resync),
                // Mostly small values and positions near the ends, which pass more checks
                // than random ones.
                (
                    0..words,
                    prop_oneof![0u64..64, 0u64..(2 * CAP as u64), any::<u64>()]
                )
                    .prop_map(|(i, v)| Op::Scribble(i * 8, v)),
                (0..words * 2, prop_oneof![0u32..8, any::<u32>()])
                    .prop_map(|(i, v)| Op::Scribble32(i * 4, v)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn no_bytes_in_the_region_make_the_ring_panic(
                ops in proptest::collection::vec(op(), 1..200)
            ) {
                let t = test_ring(CAP, 0);
                let r = &t.ring;
                let me = Owner::me();
                for op in ops {
                    let ok = match op {
                        Op::PutSmall(len) => r.put_small(&vec![5; len]).map(drop),
                        Op::PutNow(len) => r.put_small_now(&vec![4; len]).map(drop),
                        Op::TakeNow => r.claim_now(None, &mut Vec::new()).map(drop),
                        Op::Counting(on) => {
                            r.word32(POLLERS).store(u32::from(on), Ordering::Relaxed);
                            Ok(())
                        }
                        Op::Put(len) => r.reserve_small(len, me).map(|slot| {
                            if let Some(slot) = slot {
                                r.fill(slot, &vec![6; len]);
                                r.publish(slot);
                            }
                        }),
                        Op::Take(owned) => {
                            let mut out = Vec::new();
                            r.claim(owned.then_some(me), &mut out).map(|claim| {
                                if let Some(claim) = claim.filter(|c| !c.copied) {
                                    r.read(claim, &mut out);
                                    r.release(claim);
                                }
                            })
                        }
                        Op::Reclaim => r.reclaim().map(drop),
                        Op::BuryDead => r.bury_dead().map(drop),
                        Op::BuryLockHolders => r.bury_lock_holders(),
                        Op::Count => r.count().map(drop),
                        Op::AnyReady => r.any_ready().map(drop),
                        Op::Resync => r.resync_put(),
                        Op::Scribble(at, value) => {
                            r.mem.u64_at(at).store(value, Ordering::Relaxed);
                            Ok(())
                        }
                        Op::Scribble32(at, value) => {
                            r.mem.u32_at(at).store(value, Ordering::Relaxed);
                            Ok(())
                        }
                    };
                    if ok.is_err() {
                        r.reset();
                    }
                }
                // The configuration may have been written over too: put it back, as a
                // queue's handle would refuse a region whose capacity changed.
                r.word(CAPACITY).store(CAP as u64, Ordering::Relaxed);
                r.word(MAXSIZE).store(0, Ordering::Relaxed);
                r.reset();
                prop_assert!(r.put_small(b"after").unwrap().is_some());
                let mut out = Vec::new();
                let claim = r.claim(Some(me), &mut out).unwrap();
                prop_assert!(claim.is_some_and(|c| c.copied));
                prop_assert_eq!(&out[..], b"after");
            }
        }
    }
}
