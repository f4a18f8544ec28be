//! Each side's lock, *biased*: a thread that keeps taking a side's lock with nobody else
//! wanting it ends up keeping it between its operations, and then enters and leaves an
//! operation with two plain stores and two loads, no atomic read-modify-write. Any other
//! thread or process that wants the side takes it back with `membarrier(2)`.
//!
//! # Why
//! One `lock`ed instruction per item costs a small item most of its time here: it waits for
//! the stores before it, and the ring's lines they wrote are on their way to the other
//! side's core (the bench's `raw/spsc ring +1 rmw` row: a quarter of the raw ring's rate).
//! A queue used by one producer and one consumer at a time (the usual case) needs none.
//!
//! # The protocol
//! Shared words, per side: the lock ([`RawLock`], held by the biased holder's process for
//! as long as the bias lasts), the *bias word* (0, or the holder's token: its slot and an
//! episode count; its top bit [`REVOKED`] asks the holder to give the side up), and a table
//! of [`SLOTS`] slots, each on a cache line of its own, whose first word says "in an
//! operation". A slot belongs to one handle of one process, and only the one thread of that
//! process that may hold the bias through that handle ever writes its word.
//!
//! - **Biasing.** A holder that took the lock uncontended [`STREAK`] times in a row, with
//!   nobody asleep on it, does not release it: it writes its token into the bias word
//!   (nobody else writes a bias word that is 0: only the lock's holder does).
//! - **Entering** (the holder): store 1 in its slot, a compiler fence, load the bias word.
//!   Still its token: it is inside, as if it held the lock (it does). Else it stores 0 and
//!   has lost the bias (below).
//! - **Leaving** (the holder): store 0 in its slot (release), a compiler fence, load the
//!   bias word; if it was asked to give up meanwhile, it does (below).
//! - **Taking it back** (anyone whose lock attempt failed while the bias word holds a
//!   token): set [`REVOKED`] in the bias word, run `membarrier` with
//!   `MEMBARRIER_CMD_GLOBAL_EXPEDITED` (every CPU running a thread of a process registered
//!   for it, which every holder is before it first biases, executes a full fence; a thread
//!   not running has passed through the scheduler's), then read the holder's slot. 0: the
//!   holder is outside, and whatever it does next it does after the fence, so it sees the
//!   request; whoever then turns the bias word from `REVOKED | token` to 0 (one
//!   compare-and-swap, so one party) releases the holder's lock on its behalf. 1: the holder
//!   is inside; leaving, it sees the request (its load comes after the fence, since its
//!   store of 0 is not visible yet) and gives up itself. This is an asymmetric Dekker
//!   handshake: the holder's store-then-load needs only the compiler's order because the
//!   taker's fence reaches into the holder's CPU.
//! - **Giving up** (the holder, finding `REVOKED | token`): turn it to 0 (the same one
//!   compare-and-swap), and if that won, release the lock. Finding anything else, someone
//!   already did.
//! - **A holder that died** outside an operation is taken back as above (its slot reads 0);
//!   inside one, its slot stays 1, and the lock's own take-over from a dead owner applies
//!   (the queue then repairs the side as after any death under its lock), clearing the bias
//!   word.
//! - **Waiting**: a thread that finds the lock held waits on it in slices of [`SLICE`],
//!   looking at the bias word between them, so a holder that biased while it slept is
//!   taken back within a slice.
//!
//! A process keeps its handle's state (`Local`) in its own memory: a fork child finds a pid
//! other than its own there and starts afresh, so it never uses its parent's slot or token.
//!
//! Every word here is in memory other processes may write: a token is checked to name a
//! slot before it is used, and garbage can at worst wedge the side (as garbage in a lock
//! word can), never reach outside the region.

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
/// The slot bits of a token (its index plus one).
const SLOT_BITS: u64 = 0xff;
/// Uncontended takes in a row before a thread keeps the lock.
pub(crate) const STREAK: u32 = 16;
/// How long a waiter sleeps on the lock before it looks at the bias word again.
const SLICE: Duration = Duration::from_millis(2);

// A slot's words.
/// "In an operation" (`u32`), written only by the slot's thread.
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
    /// Biased episodes so far (in the token, so that an old request cannot hit a new one).
    episodes: AtomicU64,
    /// Uncontended takes in a row by `thread`.
    streak: AtomicU32,
}

const NO_SLOT: u32 = u32::MAX;

/// How long an acquisition may wait.
#[derive(Clone, Copy)]
enum Until {
    /// Not at all: one try (taking a bias back from a holder outside its operation).
    Now,
    Never,
    At(Instant),
}

/// A number naming the calling thread among this process image's threads (a fork child's
/// thread keeps its parent's, but the child has another pid, which [`Local`] checks first).
#[inline]
fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    TOKEN.with(|t| match t.get() {
        0 => {
            let token = NEXT.fetch_add(1, Ordering::Relaxed);
            t.set(token);
            token
        }
        token => token,
    })
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
        (index < SLOTS).then(|| self.mem.u32_at(self.table + index * SLOT_BYTES + IN_OP))
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

    /// As [`Lock::enter_biased`], giving the token to leave with ([`Lock::leave_biased`]),
    /// for a caller that keeps it (a look at this thread's state saved).
    #[inline(always)]
    pub(crate) fn enter_biased_token(&self) -> Option<u64> {
        let token = self.mine()?;
        self.enter(token).then_some(token)
    }

    /// Leaves what [`Lock::enter_biased_token`] entered.
    #[inline(always)]
    pub(crate) fn leave_biased(&self, token: u64) {
        self.leave(token);
    }

    /// Takes the lock only if nobody is using the side now (a biased holder outside its
    /// operation is not using it: the bias is taken back).
    #[inline]
    pub(crate) fn try_acquire(&self) -> Acquire {
        if self.enter_biased() {
            return Acquire::Acquired;
        }
        if self.raw.try_acquire() == Acquire::Acquired {
            self.took(true);
            return Acquire::Acquired;
        }
        self.acquire_slow(Until::Now)
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
        if self.raw.try_acquire() == Acquire::Acquired {
            self.took(true);
            return Acquire::Acquired;
        }
        self.acquire_slow(deadline.map_or(Until::Never, Until::At))
    }

    #[cold]
    fn acquire_slow(&self, until: Until) -> Acquire {
        loop {
            match self.raw.try_acquire() {
                Acquire::Acquired => {
                    self.took(false);
                    return Acquire::Acquired;
                }
                Acquire::OwnerDied => return self.took_from_dead(),
                Acquire::TimedOut => {}
            }
            if self.take_back() {
                continue;
            }
            let deadline = match until {
                Until::Now => return Acquire::TimedOut,
                Until::Never => None,
                Until::At(d) => Some(d),
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Acquire::TimedOut;
            }
            let until = deadline.map_or(now + SLICE, |d| d.min(now + SLICE));
            match self.raw.acquire_timeout(until - now) {
                Acquire::Acquired => {
                    self.took(false);
                    return Acquire::Acquired;
                }
                Acquire::OwnerDied => return self.took_from_dead(),
                Acquire::TimedOut => {}
            }
        }
    }

    /// After taking the lock from a dead owner: its bias, if any, is void.
    fn took_from_dead(&self) -> Acquire {
        self.bias.store(0, Ordering::Relaxed);
        self.local.streak.store(0, Ordering::Relaxed);
        Acquire::OwnerDied
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

    /// If the bias word holds a token, asks its holder to give the side up, and completes
    /// that if the holder is outside its operation. Whether to try the lock again at once.
    #[cold]
    fn take_back(&self) -> bool {
        let seen = self.bias.load(Ordering::Acquire);
        if seen == 0 {
            return false;
        }
        let Some(in_op) = self.in_op(seen) else {
            return false; // garbage: wait on the lock like any other
        };
        let asked = seen | REVOKED;
        if seen != asked
            && self
                .bias
                .compare_exchange(seen, asked, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
        {
            return true; // it changed: look again
        }
        if !fence_everyone() {
            // No way to reach into the holder's CPU: leave it to give up at its next
            // operation, and wait on the lock.
            return false;
        }
        if in_op.load(Ordering::Acquire) != 0 {
            return false; // inside: it gives up as it leaves
        }
        if self
            .bias
            .compare_exchange(asked, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let _ = self.raw.release();
        }
        true
    }

    /// The holder enters its operation: whether the side is still its own.
    #[inline(always)]
    fn enter(&self, token: u64) -> bool {
        let Some(in_op) = self.in_op(token) else {
            return false;
        };
        in_op.store(1, Ordering::Relaxed);
        // The other half of the handshake is the taker's membarrier (module docs).
        compiler_fence(Ordering::SeqCst);
        let now = self.bias.load(Ordering::Relaxed);
        if now == token {
            return true;
        }
        in_op.store(0, Ordering::Release);
        self.lost(token, now);
        false
    }

    /// The holder leaves its operation.
    #[inline(always)]
    fn leave(&self, token: u64) {
        let Some(in_op) = self.in_op(token) else {
            return;
        };
        in_op.store(0, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
        let now = self.bias.load(Ordering::Relaxed);
        if now != token {
            self.lost(token, now);
        }
    }

    /// The holder found the bias word moved from its token to `now`: it holds the side no
    /// more, and gives the lock up if it was asked to and nobody did that for it.
    #[cold]
    fn lost(&self, token: u64, now: u64) {
        self.local.token.store(0, Ordering::Relaxed);
        self.local.streak.store(0, Ordering::Relaxed);
        if now == token | REVOKED
            && self
                .bias
                .compare_exchange(now, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.raw.release();
        }
    }

    /// Releases the lock after an operation: a biased holder leaves it; a thread that took
    /// it uncontended often enough keeps it, biased; anyone else releases it.
    #[inline]
    pub(crate) fn release(&self) {
        if let Some(token) = self.mine() {
            self.leave(token);
            return;
        }
        if self.local.streak.load(Ordering::Relaxed) >= STREAK && self.bias_now() {
            return;
        }
        let _ = self.raw.release();
    }

    /// Turns the lock the caller holds into a bias, if this thread may: whether it did.
    #[cold]
    fn bias_now(&self) -> bool {
        let local = self.local;
        if local.thread.load(Ordering::Relaxed) != thread_token()
            || local.pid.load(Ordering::Relaxed) != my_pid()
            || self.raw.has_waiters()
            || self.bias.load(Ordering::Relaxed) != 0
            || !registered()
        {
            local.streak.store(0, Ordering::Relaxed);
            return false;
        }
        let Some(slot) = self.slot() else {
            local.streak.store(0, Ordering::Relaxed);
            return false;
        };
        let episode = local.episodes.load(Ordering::Relaxed).wrapping_add(1);
        local.episodes.store(episode, Ordering::Relaxed);
        // 55 bits of episodes: a request held up past 2^55 of them could hit the wrong one.
        let token = ((episode << 8) & !REVOKED) | u64::from(slot + 1);
        local.token.store(token, Ordering::Relaxed);
        // We hold the lock, and only a holder writes a bias word that is 0.
        self.bias.store(token, Ordering::Release);
        true
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
        // The slot of the current bias, if any, is never reclaimed: its holder may have died
        // inside its operation, and the lock's take-over must find it so.
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
            // Not inside (a handle is dropped between operations): give up as if asked.
            for seen in [token, token | REVOKED] {
                if self
                    .bias
                    .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = self.raw.release();
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

    /// Whether some thread or process holds the lock (biased or not): a snapshot.
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.raw.is_locked()
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
