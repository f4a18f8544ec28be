//! The reference of the queue workloads: a minimal single-producer, single-consumer ring of
//! fixed-size slots in a `MAP_SHARED` memfd, with nothing a real queue needs on top (no
//! frames, no item count, no blocking, no repair after a crash): head and tail counters on
//! their own cache lines, each side caching the other's counter (the usual SPSC ring, as in
//! rigtorp's `SPSCQueue`), and spinning while full or empty.
//!
//! Every process that touches a ring is a fork of the bench process, which made it: the
//! memfd is `CLOEXEC` and never sent anywhere. (A process of the same user could still open
//! it through `/proc/PID/fd`; a bench does not defend against that, and nothing here trusts
//! a counter beyond using it modulo the slot count, so the worst it could do is garble
//! bytes of a measurement, never reach outside the mapping.)

use std::{
    os::fd::AsRawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::DEADLINE;

/// Where the consumer's counter (slots taken) and the producer's (slots filled) live, a
/// cache line apart; then a word of each side's own, each on a line of its own, for
/// [`Ring::with_rmw`] (or, for [`Ring::biased`], the side's "in an operation" word); then
/// each side's "give up your end" request of [`Ring::biased`], each on a line of its own,
/// which nobody writes here; slots start after them.
const HEAD: usize = 0;
const TAIL: usize = 64;
const PRODUCER_RMW: usize = 128;
const CONSUMER_RMW: usize = 192;
const PRODUCER_REVOKE: usize = 256;
const CONSUMER_REVOKE: usize = 320;
const SLOTS: usize = 384;

/// A `MAP_SHARED` mapping of a fresh memfd, zeroed, unmapped on drop. A fork shares it.
pub struct Shared {
    ptr: NonNull<u8>,
    len: usize,
}

impl Shared {
    pub fn new(len: usize) -> Result<Shared, String> {
        let fd = rustix::fs::memfd_create("xtask-bench", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| format!("ftruncate: {e}"))?;
        // SAFETY: a new mapping of `len` bytes of our own memfd (just sized to `len`)
        // overlaps no Rust object; it stays mapped (the fd may close) until `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Shared {
            ptr: NonNull::new(ptr.cast()).ok_or("mmap returned null")?,
            len,
        })
    }

    /// The `AtomicU64` at `offset` (8-aligned, in bounds: asserted).
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len);
        // SAFETY: in bounds and aligned (asserted; the mapping is page-aligned); any bytes
        // are a valid `AtomicU64`, and every process touches these 8 bytes only atomically.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The `count` `AtomicU64`s from `offset` on (8-aligned, in bounds: asserted).
    pub fn words(&self, offset: usize, count: usize) -> &[AtomicU64] {
        assert!(offset.is_multiple_of(8) && offset + count * 8 <= self.len);
        // SAFETY: in bounds and aligned (asserted; the mapping is page-aligned), and it
        // stays mapped while `self` is borrowed; any bytes are valid `AtomicU64`s, and every
        // process touches these words only atomically.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset).cast(), count) }
    }

    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(offset + len <= self.len);
        // SAFETY: in bounds (asserted).
        unsafe { self.ptr.as_ptr().add(offset) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every reference into it borrows `self`, so none is left.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An SPSC ring of `slots` slots of `slot` bytes each (`slots` a power of two).
pub struct Ring {
    map: Shared,
    slot: usize,
    slots: u64,
    /// What each push and each pop pays besides the SPSC ring's own work.
    extra: Extra,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    Nothing,
    /// One atomic read-modify-write (a `lock`ed instruction on x86) on a word of its own
    /// side, on a line nobody else touches: the least any queue pays that lets more than
    /// one process use a side (a reservation, a claim or a lock), without the contention.
    /// See [`Ring::with_rmw`].
    Rmw,
    /// The fast path of an end biased to one process: see [`Ring::biased`].
    Biased,
    /// Nothing per item; the consumer paces itself as ours does: see [`Ring::paced`].
    Paced,
}

impl Ring {
    pub fn new(slot: usize, slots: usize) -> Result<Ring, String> {
        assert!(slots.is_power_of_two() && slot.is_multiple_of(8));
        Ok(Ring {
            map: Shared::new(SLOTS + slot * slots)?,
            slot,
            slots: slots as u64,
            extra: Extra::Nothing,
        })
    }

    /// The same ring, where each push and each pop also makes one uncontended atomic
    /// read-modify-write on its own side's word: the floor of a queue with more than one
    /// producer or consumer, which needs at least that per item to keep them apart. On x86
    /// such an instruction waits for the stores before it to reach the cache, and the
    /// slots and counters just written are lines the other side reads: each one waits for
    /// a line to come back from the other core.
    pub fn with_rmw(slot: usize, slots: usize) -> Result<Ring, String> {
        Ok(Ring {
            extra: Extra::Rmw,
            ..Ring::new(slot, slots)?
        })
    }

    /// The same ring, where each push and each pop also makes what the fast path of an end
    /// *biased* to one process makes, and no atomic read-modify-write: a store saying it is
    /// in an operation, a load of a "give up your end" request (never made here), and a
    /// store saying it is out again. The "in an operation" word sits on a line of its own
    /// side's; the request, on a line only that end reads (another process would write it
    /// only to take the end over). That is the steady state of a multi-producer,
    /// multi-consumer queue whose ends stay with the process that last used them: another
    /// process that wants an end sets the request, runs `membarrier(2)` with
    /// `MEMBARRIER_CMD_GLOBAL_EXPEDITED` (a full fence on every CPU running a thread of a
    /// process registered for it with `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`, as each
    /// owner would before taking an end) and then reads the "in an operation" word with
    /// Acquire. So the owner's store and load need only the compiler's ordering (an
    /// asymmetric Dekker handshake). The slow paths (taking an end over, a consumer about
    /// to sleep, an owner that died inside its operation) are not measured: this row is the
    /// ceiling of such a design here. (The owner's check of room or of an item comes before
    /// its `begin` here; a real end would check after it, at the same cost.)
    pub fn biased(slot: usize, slots: usize) -> Result<Ring, String> {
        Ok(Ring {
            extra: Extra::Biased,
            ..Ring::new(slot, slots)?
        })
    }

    /// The plain ring, whose consumer, once it has caught up with the producer
    /// [`CHASE`] times in a row (finding an item or two each time, never an empty ring),
    /// spins [`CHASE_PAUSE`] before it reads `tail` again: the pause of our queue's
    /// consumer (`mp_queue`'s `ring::CHASE`), which keeps a stream out of lockstep. The
    /// plain ring falls into lockstep in some runs and not others (its consumer pulling the
    /// line the producer is writing on every item, at a fraction of its rate); paced, it
    /// runs at its fast rate in every run, so this row is the steady ceiling of a ring of
    /// ours.
    pub fn paced(slot: usize, slots: usize) -> Result<Ring, String> {
        Ok(Ring {
            extra: Extra::Paced,
            ..Ring::new(slot, slots)?
        })
    }

    /// What a push or a pop pays before it touches the slot, on its side's words `own` and
    /// `revoke` ([`Extra`]): whether it may go on (false only for a biased end that was
    /// asked for, which is then out of its operation again).
    #[inline]
    fn begin(&self, own: usize, revoke: usize) -> bool {
        match self.extra {
            Extra::Nothing | Extra::Paced => true,
            Extra::Rmw => {
                self.map.word(own).fetch_add(1, Ordering::SeqCst);
                true
            }
            Extra::Biased => {
                self.map.word(own).store(1, Ordering::Relaxed);
                // The other half of the handshake is the taker's `membarrier`: only the
                // compiler must keep the store above before the load below.
                std::sync::atomic::compiler_fence(Ordering::SeqCst);
                let free = self.map.word(revoke).load(Ordering::Relaxed) == 0;
                if !free {
                    self.end(own);
                }
                free
            }
        }
    }

    /// What a push or a pop pays once done: a biased end says it is out of its operation.
    #[inline]
    fn end(&self, own: usize) {
        if self.extra == Extra::Biased {
            self.map.word(own).store(0, Ordering::Release);
        }
    }

    fn slot_ptr(&self, index: u64) -> *mut u8 {
        let i = (index & (self.slots - 1)) as usize;
        self.map.at(SLOTS + i * self.slot, self.slot)
    }

    /// The producer side, to be used by one process (or thread) at a time.
    pub fn producer(&self) -> Producer<'_> {
        Producer {
            ring: self,
            tail: self.map.word(TAIL).load(Ordering::Relaxed),
            head: self.map.word(HEAD).load(Ordering::Acquire),
        }
    }

    /// The consumer side, to be used by one process (or thread) at a time.
    pub fn consumer(&self) -> Consumer<'_> {
        Consumer {
            ring: self,
            head: self.map.word(HEAD).load(Ordering::Relaxed),
            tail: self.map.word(TAIL).load(Ordering::Acquire),
            chase: 0,
        }
    }
}

/// Spins until `ready()`, failing after [`DEADLINE`].
fn spin_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    let mut spins = 0u32;
    while !ready() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) && start.elapsed() > DEADLINE {
            return Err(format!("raw ring {what} for {DEADLINE:?}"));
        }
    }
    Ok(())
}

pub struct Producer<'a> {
    ring: &'a Ring,
    /// Slots filled (ours alone to write).
    tail: u64,
    /// The consumer's count as last read: it only grows, so room seen stays room.
    head: u64,
}

impl Producer<'_> {
    /// Copies `item` (at most one slot) into the next slot, spinning while the ring is full.
    pub fn push(&mut self, item: &[u8]) -> Result<(), String> {
        assert!(item.len() <= self.ring.slot);
        if self.tail - self.head == self.ring.slots {
            let head = self.ring.map.word(HEAD);
            spin_until("full", || {
                self.head = head.load(Ordering::Acquire);
                self.tail - self.head < self.ring.slots
            })?;
        }
        if !self.ring.begin(PRODUCER_RMW, PRODUCER_REVOKE) {
            return Err("raw ring: a producer's end was asked for".into());
        }
        // SAFETY: the slot is in the mapping (`slot_ptr`); the consumer has released it
        // (its head, read with Acquire, passed it) and will not read it before our Release
        // store of `tail` below, so no other process touches these bytes meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(item.as_ptr(), self.ring.slot_ptr(self.tail), item.len())
        };
        self.tail += 1;
        self.ring.map.word(TAIL).store(self.tail, Ordering::Release);
        self.ring.end(PRODUCER_RMW);
        Ok(())
    }
}

pub struct Consumer<'a> {
    ring: &'a Ring,
    /// Slots taken (ours alone to write).
    head: u64,
    /// The producer's count as last read.
    tail: u64,
    /// Reads of `tail` in a row that found items (for [`Ring::paced`]).
    chase: u32,
}

/// See [`Ring::paced`]: the values of our queue's consumer.
const CHASE: u32 = 8;
const CHASE_PAUSE: Duration = Duration::from_micros(2);

impl Consumer<'_> {
    /// Copies the next item into `out` (at most one slot) if there is one.
    pub fn try_pop(&mut self, out: &mut [u8]) -> bool {
        if self.head == self.tail {
            let paced = self.ring.extra == Extra::Paced;
            if paced && self.chase >= CHASE {
                let until = Instant::now() + CHASE_PAUSE;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            self.tail = self.ring.map.word(TAIL).load(Ordering::Acquire);
            if self.head == self.tail {
                self.chase = 0;
                return false;
            }
            self.chase = self.chase.saturating_add(u32::from(paced));
        }
        assert!(out.len() <= self.ring.slot);
        // Never asked for in a bench: a consumer's end given up would be a bug here.
        assert!(
            self.ring.begin(CONSUMER_RMW, CONSUMER_REVOKE),
            "raw ring: a consumer's end was asked for"
        );
        // SAFETY: the slot is in the mapping; the producer published it (its tail, read
        // with Acquire, passed it) and will not write it again before our Release store of
        // `head` below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ring.slot_ptr(self.head),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        self.head += 1;
        self.ring.map.word(HEAD).store(self.head, Ordering::Release);
        self.ring.end(CONSUMER_RMW);
        true
    }

    /// Copies the next item into `out`, spinning while the ring is empty.
    pub fn pop(&mut self, out: &mut [u8]) -> Result<(), String> {
        if self.try_pop(out) {
            return Ok(());
        }
        spin_until("empty", || self.try_pop(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_ring_hands_items_over_in_order() {
        for make in [Ring::new, Ring::with_rmw, Ring::biased, Ring::paced] {
            let ring = make(8, 4).unwrap();
            let (mut producer, mut consumer) = (ring.producer(), ring.consumer());
            let mut out = [0u8; 8];
            for round in 0..3u64 {
                for i in 0..4u64 {
                    producer.push(&(round * 4 + i).to_ne_bytes()).unwrap();
                }
                for i in 0..4u64 {
                    consumer.pop(&mut out).unwrap();
                    assert_eq!(u64::from_ne_bytes(out), round * 4 + i);
                }
                assert!(!consumer.try_pop(&mut out), "empty");
            }
        }
    }

    #[test]
    fn a_biased_end_that_was_asked_for_stops_and_says_so() {
        let ring = Ring::biased(8, 4).unwrap();
        let mut producer = ring.producer();
        producer.push(&1u64.to_ne_bytes()).unwrap();
        assert_eq!(
            ring.map.word(PRODUCER_RMW).load(Ordering::Relaxed),
            0,
            "left"
        );
        ring.map.word(PRODUCER_REVOKE).store(1, Ordering::Relaxed);
        assert!(producer.push(&2u64.to_ne_bytes()).is_err());
        assert_eq!(
            ring.map.word(PRODUCER_RMW).load(Ordering::Relaxed),
            0,
            "left"
        );
        let mut out = [0u8; 8];
        let mut consumer = ring.consumer();
        assert!(consumer.try_pop(&mut out));
        assert_eq!(u64::from_ne_bytes(out), 1);
        assert!(
            !consumer.try_pop(&mut out),
            "the refused item was not published"
        );
    }
}
