//! Each side's lock, *biased*: a thread that keeps taking a side's lock with nobody else
//! wanting it ends up holding the side between its operations without the lock, and then
//! enters and leaves an operation with plain stores and a load, no atomic
//! read-modify-write. Any other thread or process that wants the side takes the lock, then
//! takes the side back with `membarrier(2)`.
//!
//! # Why
//! One `lock`ed instruction per item costs a small item most of its time here: it waits for
//! the stores before it, and the ring's lines they wrote are on their way to the other
//! side's core (the bench's `raw/spsc ring +1 rmw` row: a quarter of the raw ring's rate).
//! A queue used by one producer and one consumer at a time (the usual case) needs none.
//!
//! # The protocol
//! Shared words, per side: the lock (a robust [`RawLock`]), the *bias word* (0, or the
//! holder's token: its slot and an episode count; its top bit [`REVOKED`] says the side is
//! being taken back), and a table of [`SLOTS`] slots, each on a cache line of its own: an
//! "in an operation" word, and the [`ProcessId`] of the process that claimed the slot. A
//! slot belongs to one handle of one process; its word is written by the one thread of that
//! process that may hold the side biased through that handle, and, while no bias names the
//! slot, by whoever claims or frees it.
//!
//! - **The rule.** Only a holder of the [`RawLock`] writes a token into the bias word or
//!   clears it, apart from the bias's own holder clearing its token (a request addressed to
//!   it, below, or its bias as it drops its handle): then nobody is inside. A
//!   party inside the side is either the lock's holder, having found the bias word 0, or
//!   the thread whose token the bias word holds, having seen it there after announcing
//!   itself in its slot.
//! - **Biasing.** A thread that took the lock uncontended [`STREAK`] times in a row, with
//!   nobody asleep on it, writes its token into the bias word (0: it cleared it when it
//!   took the lock) and releases the lock.
//! - **Entering** (the holder of the bias): store 1 in its slot, a compiler fence, load the
//!   bias word. Still its token: it is inside. Anything else: it stores 0 and has lost the
//!   bias (if the word asks it to give up, it clears the request, which saves the next
//!   taker a wait).
//! - **Leaving:** store 0 in its slot (release).
//! - **Taking back** (whoever takes the lock and finds a token): set [`REVOKED`], run
//!   `membarrier` with `MEMBARRIER_CMD_GLOBAL_EXPEDITED` (every CPU running a thread of a
//!   process registered for it, as every holder of a bias is, executes a full fence; a
//!   thread not running has passed through the scheduler's), then wait for the holder's
//!   slot to read 0, and clear the bias word. A holder that saw its token entered before the
//!   fence, so its 1 is visible after it, and the taker waits for its 0 (release: the
//!   taker sees its operation's writes); one that looks after the fence sees the request.
//!   This is an asymmetric Dekker handshake: the holder's store-then-load needs only the
//!   compiler's order because the taker's fence reaches into the holder's CPU.
//! - **Deaths.** A holder that died outside its operation is taken back as above. One that
//!   died inside it leaves its slot at 1: the taker, holding the lock, finds its process gone
//!   (checked every 10 ms of waiting) and reports [`Acquire::OwnerDied`], so the queue
//!   repairs the side as after any death under its lock. A taker that dies holding the lock
//!   is an ordinary dead owner; whoever takes the lock from it finds the request and
//!   finishes it.
//! - **Waiting** for the lock is the lock's own: the bias never holds it, so its releases
//!   wake its waiters.
//!
//! A process keeps its handle's state ([`Local`]) in its own memory: a fork child finds a
//! pid other than its own there and starts afresh, so it never uses its parent's slot or
//! token. A thread never re-enters a side it is inside (a nested take of the same side
//! waits for itself, as it did on the plain lock).
//!
//! Every word here is in memory other processes may write: a token is checked to name a
//! slot before it is used, and garbage can at worst wedge the side or let two parties in
//! (as garbage in a lock word can), never reach outside the region.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering, compiler_fence},
    time::{Duration, Instant},
};

use mp_sync::{Acquire, ProcessId, RawLock};
use rustix::thread::{MembarrierCommand, MembarrierQuery, membarrier, membarrier_query};

use crate::sys::Bytes;

/// Slots per side.
pub(crate) const SLOTS: usize = 16;
/// Bytes of a slot: a cache line, so that a holder's stores never share a line with anyone
/// else's.
pub(crate) const SLOT_BYTES: usize = 64;
/// Bytes of one side's slot table.
pub(crate) const TABLE_BYTES: usize = SLOTS * SLOT_BYTES;
/// In a bias word: the holder is asked to give the side up.
const REVOKED: u64 = 1 << 63;
/// In a bias word, beside [`REVOKED`]: a taker's fence has run since the request was made,
/// so a later taker (which took the lock after that one released it) need not run another.
const FENCED: u64 = 1 << 62;
/// The slot bits of a token (its index plus one).
const SLOT_BITS: u64 = 0xff;
/// Uncontended takes of the lock in a row before a thread biases the side to itself.
pub(crate) const STREAK: u32 = 16;
/// How often a taker waiting for a holder inside its operation asks whether the holder's
/// process is gone.
const HOLDER_CHECK: Duration = Duration::from_millis(10);

// A slot's words.
/// "In an operation" (`u32`): written by the slot's thread, and reset by whoever claims or
/// frees the slot (while no bias names it).
const IN_OP: usize = 0;
/// Who claimed the slot: the second word of its process's [`ProcessId`] (never 0), or 0.
const CLAIM: usize = 8;
/// The first word of that [`ProcessId`] (its namespaces).
const CLAIM_NS: usize = 16;

/// One process's state of one side of one handle, in that process's own memory.
#[derive(Debug, Default)]
pub(crate) struct Local {
    /// The process this state belongs to (the second word of its [`ProcessId`]): a fork
    /// child sees its parent's here, and starts afresh.
    pid: AtomicU64,
    /// The only thread of this process that may hold the bias through this handle (a
    /// [`thread_token`]; 0: none chosen yet).
    thread: AtomicU64,
    /// Our slot's index plus one; 0: none yet; [`NO_SLOT`]: none to be had.
    slot: AtomicU32,
    /// The bias word while we hold the side biased; 0 while we do not.
    token: AtomicU64,
    /// Where the "in an operation" word of the token's slot is, as an index of the control
    /// block's 4-byte words: set with the token, for the fast path to find it at once.
    in_op: AtomicU32,
    /// Biased episodes so far (in the token, which thus differs from one bias to the next).
    episodes: AtomicU64,
    /// Uncontended takes in a row by `thread`.
    streak: AtomicU32,
}

const NO_SLOT: u32 = u32::MAX;

/// The holder found the bias word moved from its token to `now`: it holds the side no more.
/// A request addressed to it is cleared (it is outside), which saves the taker its wait. (A
/// function of what it uses, not of the whole [`Lock`], which the fast path would otherwise
/// write out to the stack for it.)
#[cold]
#[inline(never)]
fn lost(local: &Local, bias: &AtomicU64, token: u64, now: u64) {
    local.token.store(0, Ordering::Relaxed);
    local.streak.store(0, Ordering::Relaxed);
    if now & !(REVOKED | FENCED) == token && now & REVOKED != 0 {
        let _ = bias.compare_exchange(now, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// A biased holder inside its operation: the "in an operation" word it leaves by.
#[must_use = "the side stays entered until `Inside::leave`"]
pub(crate) struct Inside<'a>(&'a AtomicU32);

impl Inside<'_> {
    /// The holder leaves its operation (what [`Lock::enter_biased_token`] entered).
    #[inline(always)]
    pub(crate) fn leave(self) {
        self.0.store(0, Ordering::Release);
    }
}

/// How a take-back went.
enum Back {
    /// Nobody is inside: the side is the lock holder's.
    Done,
    /// The holder died inside its operation: repair.
    HolderDied,
    /// The holder is still inside at the deadline.
    Busy,
}

/// A number naming the calling thread among this process image's threads (a fork child's
/// thread keeps its parent's, but the child has another pid, which [`Local`] checks first).
#[inline]
fn thread_token() -> u64 {
    mp_sync::__thread_token()
}

/// This process (the second word of its [`ProcessId`]: pid and start time).
#[inline]
fn my_pid() -> u64 {
    ProcessId::current_pid_word()
}

/// One side's lock: the [`RawLock`] in the region, its bias word and slot table, and this
/// process's [`Local`] state of it.
#[derive(Clone, Copy)]
pub(crate) struct Lock<'a> {
    raw: &'a RawLock,
    bias: &'a AtomicU64,
    /// The region, and where this side's slot table starts in it.
    mem: &'a Bytes,
    table: usize,
    local: &'a Local,
    /// Whether a take through this value counts toward biasing the side (a pass through
    /// the lock by a process about to sleep does not: see [`Lock::passing`]).
    counts: bool,
}

impl<'a> Lock<'a> {
    pub(crate) fn new(
        raw: &'a RawLock,
        bias: &'a AtomicU64,
        mem: &'a Bytes,
        table: usize,
        local: &'a Local,
    ) -> Lock<'a> {
        Lock {
            raw,
            bias,
            mem,
            table,
            local,
            counts: true,
        }
    }

    /// The same lock, for a pass through it that is not a use of the side (a process about
    /// to sleep, ordering itself with the other side's operations): its takes never bias
    /// the side to the passer.
    pub(crate) fn passing(self) -> Lock<'a> {
        Lock {
            counts: false,
            ..self
        }
    }

    /// Whether both are the same side of the same ring.
    pub(crate) fn same(&self, other: &Lock<'_>) -> bool {
        std::ptr::eq(self.raw, other.raw)
    }

    /// The "in an operation" word of the slot a token names; `None` for a token that names
    /// no slot (written over by another process).
    #[inline(always)]
    fn in_op(&self, token: u64) -> Option<&'a AtomicU32> {
        let index = (token & SLOT_BITS).checked_sub(1)? as usize;
        let control = self.mem.head32::<{ crate::ring::CONTROL / 4 }>();
        (index < SLOTS).then(|| &control[(self.table + index * SLOT_BYTES + IN_OP) / 4])
    }

    /// Whether the calling thread holds this side biased through this handle.
    #[inline(always)]
    fn mine(&self) -> Option<u64> {
        let token = self.local.token.load(Ordering::Relaxed);
        (token != 0
            && self.local.thread.load(Ordering::Relaxed) == thread_token()
            && self.local.pid.load(Ordering::Relaxed) == my_pid())
        .then_some(token)
    }

    /// Enters the side if the calling thread holds it biased: the fast path of every
    /// operation. Whether it did; if so, [`Lock::release`] leaves.
    #[inline]
    pub(crate) fn enter_biased(&self) -> bool {
        self.enter_biased_token().is_some()
    }

    /// As [`Lock::enter_biased`], giving what to leave with ([`Inside::leave`]), for a
    /// caller that keeps it (a look at this thread's state, and at where its slot is, saved).
    #[inline(always)]
    pub(crate) fn enter_biased_token(&self) -> Option<Inside<'a>> {
        let (token, in_op) = self.mine_inside()?;
        self.enter(token, in_op).then_some(Inside(in_op))
    }

    /// [`Lock::mine`], with the "in an operation" word of the token's slot.
    #[inline(always)]
    fn mine_inside(&self) -> Option<(u64, &'a AtomicU32)> {
        let token = self.mine()?;
        Some((token, self.my_in_op()?))
    }

    /// The "in an operation" word of the slot of the token this process keeps, found from
    /// the index kept with it (meaningful only while [`Lock::mine`] says so).
    #[inline(always)]
    fn my_in_op(&self) -> Option<&'a AtomicU32> {
        let control = self.mem.head32::<{ crate::ring::CONTROL / 4 }>();
        control.get(self.local.in_op.load(Ordering::Relaxed) as usize)
    }

    /// Takes the lock only if nobody is using the side now (a biased holder outside its
    /// operation is not using it: the side is taken back, which costs a `membarrier`; one
    /// inside is, and it is asked to give the side up as it enters next).
    #[inline]
    pub(crate) fn try_acquire(&self) -> Acquire {
        if self.enter_biased() {
            return Acquire::Acquired;
        }
        match self.raw.try_acquire() {
            Acquire::TimedOut => Acquire::TimedOut,
            took => self.unbias(took, true, Some(Instant::now())),
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub(crate) fn acquire(&self) -> Acquire {
        self.acquire_until(None)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub(crate) fn acquire_timeout(&self, timeout: Duration) -> Acquire {
        self.acquire_until(Some(Instant::now() + timeout))
    }

    /// Takes the lock by `deadline` (`None`: waits for ever).
    pub(crate) fn acquire_until(&self, deadline: Option<Instant>) -> Acquire {
        if self.enter_biased() {
            return Acquire::Acquired;
        }
        let first = self.raw.try_acquire();
        let took = match (first, deadline) {
            (Acquire::TimedOut, None) => self.raw.acquire(),
            (Acquire::TimedOut, Some(d)) => self
                .raw
                .acquire_timeout(d.saturating_duration_since(Instant::now())),
            (took, _) => took,
        };
        if took == Acquire::TimedOut {
            return took;
        }
        self.unbias(took, first != Acquire::TimedOut, deadline)
    }

    /// With the lock just taken (`took`): takes the side back from a biased holder if the
    /// bias word names one, and counts the take toward this thread's own bias (`first`:
    /// taken at the first try). What the caller is told: `took`, or `OwnerDied` for a holder
    /// that died inside its operation, or `TimedOut` (the lock released again) if the
    /// holder is still inside at `deadline` (`None`: never).
    #[inline]
    fn unbias(&self, took: Acquire, first: bool, deadline: Option<Instant>) -> Acquire {
        let biased = self.bias.load(Ordering::Acquire) != 0;
        let took = if biased {
            match self.take_back(deadline) {
                Back::Done => took,
                Back::HolderDied => Acquire::OwnerDied,
                Back::Busy => {
                    // (A dead owner of the lock that left a token behind never got inside:
                    // nothing of it to repair.)
                    let _ = self.raw.release();
                    return Acquire::TimedOut;
                }
            }
        } else {
            took
        };
        // The bias word is 0 now: any token this process keeps is stale (its thread finds
        // that as it enters; cleared here too, so that `release` never takes this lock's
        // holder for a biased one).
        if self.local.token.load(Ordering::Relaxed) != 0 {
            self.local.token.store(0, Ordering::Relaxed);
        }
        // Only a take that found the side free counts toward a bias.
        self.took(first && !biased && took == Acquire::Acquired && self.counts);
        took
    }

    /// Takes the side back from the holder the bias word names; the caller holds the lock
    /// (see the module docs). Waits for a holder inside its operation until `deadline`.
    #[cold]
    fn take_back(&self, deadline: Option<Instant>) -> Back {
        let mut seen = self.bias.load(Ordering::Acquire);
        if seen == 0 {
            return Back::Done;
        }
        let Some(in_op) = self.in_op(seen) else {
            // Garbage (no slot): no holder can be using it.
            self.bias.store(0, Ordering::Release);
            return Back::Done;
        };
        if seen & REVOKED == 0 {
            match self.bias.compare_exchange(
                seen,
                seen | REVOKED,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => seen |= REVOKED,
                // The holder cleared it (dropping its handle): the side is free.
                Err(0) => return Back::Done,
                // Written over meanwhile: look again.
                Err(_) => return self.take_back(deadline),
            }
        }
        // One fence per request: a taker before us that fenced said so, and its release of
        // the lock, then our take of it, order the holder's "inside" before our look.
        let fenced = seen & FENCED != 0 || {
            let done = fence_everyone();
            if done
                && self
                    .bias
                    .compare_exchange(seen, seen | FENCED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                seen |= FENCED;
            }
            done
        };
        let holder = self.holder_of(seen);
        let start = Instant::now();
        let mut next_check = start + HOLDER_CHECK;
        let mut pause = Duration::from_micros(5);
        let mut spins = 0u32;
        loop {
            // Without the fence, only the holder's own answer counts: it clears the request
            // when it next enters.
            let now_word = self.bias.load(Ordering::Acquire);
            if now_word != seen || (fenced && in_op.load(Ordering::Acquire) == 0) {
                // (Cleared by the holder, or by us below: either way nobody is inside.)
                let _ =
                    self.bias
                        .compare_exchange(now_word, 0, Ordering::AcqRel, Ordering::Relaxed);
                return Back::Done;
            }
            let now = Instant::now();
            let out_of_time = deadline.is_some_and(|d| now >= d);
            // (Asked once more when time is up, as the lock asks of its dead owners: a short
            // wait must still find a holder killed inside its operation.)
            if now >= next_check || out_of_time {
                next_check = now + HOLDER_CHECK;
                if holder.is_gone() {
                    self.bias.store(0, Ordering::Release);
                    return Back::HolderDied;
                }
            }
            if out_of_time {
                return Back::Busy;
            }
            // Inside its operation: a running holder leaves within microseconds, one the
            // scheduler took off its CPU (perhaps for us) may take a while. (Slept on the
            // word as it reads now, so that no value makes this a busy loop; nobody wakes
            // it: the sleep is a pause.)
            if spins < 64 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let word = in_op.load(Ordering::Relaxed);
                crate::sys::futex_wait(in_op, word, Some(pause));
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// The process that claimed the slot a token names (or none).
    fn holder_of(&self, token: u64) -> ProcessId {
        let Some(index) = ((token & SLOT_BITS) as usize).checked_sub(1) else {
            return ProcessId::NONE;
        };
        let at = self.table + index * SLOT_BYTES;
        ProcessId::from_words([
            self.mem.u64_at(at + CLAIM_NS).load(Ordering::Relaxed),
            self.mem.u64_at(at + CLAIM).load(Ordering::Relaxed),
        ])
    }

    /// The holder enters its operation, by the "in an operation" word of its token's slot:
    /// whether the side is still its own.
    #[inline(always)]
    fn enter(&self, token: u64, in_op: &AtomicU32) -> bool {
        if in_op.load(Ordering::Relaxed) != 0 {
            // Inside already (a nested take): not again.
            return false;
        }
        in_op.store(1, Ordering::Relaxed);
        // The other half of the handshake is the taker's membarrier (module docs).
        compiler_fence(Ordering::SeqCst);
        let now = self.bias.load(Ordering::Relaxed);
        if now == token {
            return true;
        }
        in_op.store(0, Ordering::Release);
        lost(self.local, self.bias, token, now);
        false
    }

    /// Counts a take of the lock toward biasing: uncontended (`first`), by the one thread
    /// that may bias through this handle, or not.
    #[inline]
    fn took(&self, first: bool) {
        let local = self.local;
        if local.pid.load(Ordering::Relaxed) != my_pid() {
            self.adopt();
        }
        if !first || local.thread.load(Ordering::Relaxed) != thread_token() {
            local.streak.store(0, Ordering::Relaxed);
            return;
        }
        let n = local.streak.load(Ordering::Relaxed);
        local.streak.store(n.saturating_add(1), Ordering::Relaxed);
    }

    /// Releases the side after an operation: a biased holder leaves it; a thread that took
    /// the lock uncontended often enough biases the side to itself, then releases the lock.
    #[inline]
    pub(crate) fn release(&self) {
        if self.mine().is_some() {
            if let Some(in_op) = self.my_in_op() {
                Inside(in_op).leave();
            }
            return;
        }
        if self.local.streak.load(Ordering::Relaxed) >= STREAK {
            self.bias_now();
        }
        let _ = self.raw.release();
    }

    /// Biases the side to the calling thread, which holds the lock, if it may.
    #[cold]
    fn bias_now(&self) {
        let local = self.local;
        if local.thread.load(Ordering::Relaxed) != thread_token()
            || local.pid.load(Ordering::Relaxed) != my_pid()
            || self.raw.has_waiters()
            || self.bias.load(Ordering::Relaxed) != 0
            || !registered()
        {
            local.streak.store(0, Ordering::Relaxed);
            return;
        }
        let Some(slot) = self.slot() else {
            local.streak.store(0, Ordering::Relaxed);
            return;
        };
        let episode = local.episodes.load(Ordering::Relaxed).wrapping_add(1);
        local.episodes.store(episode, Ordering::Relaxed);
        let token = ((episode << 8) & !(REVOKED | FENCED)) | u64::from(slot + 1);
        let in_op = (self.table + slot as usize * SLOT_BYTES + IN_OP) / 4;
        local.in_op.store(in_op as u32, Ordering::Relaxed);
        local.token.store(token, Ordering::Relaxed);
        // We hold the lock (the rule: module docs). Release: whoever sees the token sees
        // everything this thread did inside the side.
        self.bias.store(token, Ordering::Release);
    }

    /// This handle's slot in this process, claimed on first use; `None` if the table is
    /// full of live processes' slots.
    fn slot(&self) -> Option<u32> {
        let local = self.local;
        match local.slot.load(Ordering::Relaxed) {
            NO_SLOT => return None,
            0 => {}
            s => return Some(s - 1),
        }
        let [ns, pid] = ProcessId::current().to_words();
        // The slot the bias word names, if any, is never reclaimed: its holder may have died
        // inside its operation, and the next taker must find that holder gone. (The word
        // does not change meanwhile: we hold the lock.)
        let current = (self.bias.load(Ordering::Relaxed) & SLOT_BITS) as usize;
        for index in 0..SLOTS {
            let at = self.table + index * SLOT_BYTES;
            let claim = self.mem.u64_at(at + CLAIM);
            let seen = claim.load(Ordering::Relaxed);
            let free = seen == 0
                || (current != index + 1
                    && ProcessId::from_words([
                        self.mem.u64_at(at + CLAIM_NS).load(Ordering::Relaxed),
                        seen,
                    ])
                    .is_gone());
            if free
                && claim
                    .compare_exchange(seen, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.mem.u64_at(at + CLAIM_NS).store(ns, Ordering::Relaxed);
                self.mem.u32_at(at + IN_OP).store(0, Ordering::Release);
                local.slot.store(index as u32 + 1, Ordering::Relaxed);
                return Some(index as u32);
            }
        }
        local.slot.store(NO_SLOT, Ordering::Relaxed);
        None
    }

    /// Makes the handle's state this process's, chosing the calling thread as the one that
    /// may bias through it: the first thread of a process to take a side's lock through a
    /// handle. A fork child's copy of its parent's state is reset: nothing of it is ours.
    #[cold]
    fn adopt(&self) {
        let local = self.local;
        local.token.store(0, Ordering::Relaxed);
        local.slot.store(0, Ordering::Relaxed);
        local.streak.store(0, Ordering::Relaxed);
        local.thread.store(thread_token(), Ordering::Relaxed);
        local.pid.store(my_pid(), Ordering::Relaxed);
    }

    /// Gives the bias up and frees the slot, when this process drops the handle.
    pub(crate) fn forget(&self) {
        let local = self.local;
        if local.pid.load(Ordering::Relaxed) != my_pid() {
            return;
        }
        let token = local.token.swap(0, Ordering::Relaxed);
        if token != 0 {
            // Not inside (a handle is dropped between operations): give the side up, as a
            // holder clears a request addressed to it. A taker that flagged it meanwhile
            // sees the word change, or the slot at 0, and carries on.
            for seen in [token, token | REVOKED, token | REVOKED | FENCED] {
                if self
                    .bias
                    .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    break;
                }
            }
        }
        if let s @ 1..SLOTS_PLUS_ONE = local.slot.swap(0, Ordering::Relaxed) {
            let at = self.table + (s as usize - 1) * SLOT_BYTES;
            self.mem.u32_at(at + IN_OP).store(0, Ordering::Relaxed);
            self.mem.u64_at(at + CLAIM).store(0, Ordering::Release);
        }
    }

    /// Whether the calling thread holds this side biased, as far as the bias word says.
    #[cfg(test)]
    pub(crate) fn biased_here(&self) -> bool {
        self.mine()
            .is_some_and(|token| self.bias.load(Ordering::Relaxed) == token)
    }

    /// Whether the bias word asks its holder to give the side up (a taker is at work).
    #[cfg(test)]
    pub(crate) fn taking_back(&self) -> bool {
        self.bias.load(Ordering::Relaxed) & REVOKED != 0
    }

    /// Whether some thread or process holds the side, by the lock or biased: a snapshot.
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.raw.is_locked() || self.bias.load(Ordering::Relaxed) != 0
    }
}

const SLOTS_PLUS_ONE: u32 = SLOTS as u32 + 1;

/// Whether this kernel lets processes register for, and run, `MEMBARRIER_CMD_GLOBAL_EXPEDITED`
/// (asked once).
fn supported() -> bool {
    // 0: not asked yet; 1: yes; 2: no.
    static SUPPORTED: AtomicU32 = AtomicU32::new(0);
    match SUPPORTED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let query = membarrier_query();
            let yes = query.contains(
                MembarrierQuery::GLOBAL_EXPEDITED | MembarrierQuery::REGISTER_GLOBAL_EXPEDITED,
            );
            SUPPORTED.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

/// Registers this process for the takers' fence, once per process (a fork child registers
/// again: the pid is checked): whether it is registered. A process biases only once it is.
fn registered() -> bool {
    static REGISTERED: AtomicU64 = AtomicU64::new(0);
    let me = my_pid();
    if REGISTERED.load(Ordering::Relaxed) == me {
        return true;
    }
    if !supported() || membarrier(MembarrierCommand::RegisterGlobalExpedited).is_err() {
        return false;
    }
    REGISTERED.store(me, Ordering::Relaxed);
    true
}

/// A full fence on every CPU running a thread of a registered process (every bias holder
/// is one): whether it was made.
fn fence_everyone() -> bool {
    supported()
        && (membarrier(MembarrierCommand::GlobalExpedited).is_ok()
            || membarrier(MembarrierCommand::Global).is_ok())
}
