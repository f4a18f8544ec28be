//! `Queue<T>`: the handle over a [`Ring`] in a shared region, with blocking, timeouts and
//! the codec.

use std::{
    fmt,
    io::{Read, Seek, Write},
    marker::PhantomData,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use mp_codec::{Frame, Message};
use mp_sync::{Acquire, Region, Spec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    Error, PutError, Result,
    bias::{Inside, Lock},
    owner::Owner,
    ring::{self, CONTROL, Claim, Corrupt, Ring},
    sys::{self, Bytes},
};

/// The ring's size when none is given: room for 16 items of 64 KiB in flight, or tens of
/// thousands of small ones, before a producer waits. Pages are only touched as the ring
/// fills (a memfd is allocated lazily), so an idle or lightly used queue costs a few pages.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// By default, items whose frame would take more than this share of the ring go through
/// the side channel instead (see [`Builder::in_ring_limit`]): their bytes in a memfd of their own, its descriptor in a message of a
/// unix socket every handle holds. The ring then carries only a 16-byte reference, so big
/// items neither crowd out small ones nor wait for each other's room, and an item of any
/// size fits (a memfd costs a few system calls: noise next to copying 128 KiB or more).
const BIG_SHARE: usize = 8;

/// How long a waiter spins (trying again) before sleeping: waking an
/// idle CPU costs 30–45 µs on a VM, so a hand-off between busy processes should never sleep.
const SPIN: Duration = Duration::from_micros(20);
/// A producer waiting for room first asks whether a frame's owner died after this long…
const FIRST_OWNER_CHECK: Duration = Duration::from_millis(10);
/// …and then this often.
const OWNER_CHECK: Duration = Duration::from_millis(100);

/// What a `Queue<T>`'s region holds: its fingerprint names `T`, so a queue of another item
/// type is refused on attach.
struct Marker<T>(PhantomData<T>);

/// How to make a queue: item bound and ring size.
///
/// ```
/// let q = multiprocessing::queues::Queue::<u64>::builder().maxsize(10).capacity(64 << 10).build()?;
/// assert_eq!(q.maxsize(), 10);
/// # Ok::<(), multiprocessing::queues::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Builder<T> {
    maxsize: usize,
    capacity: usize,
    in_ring: Option<usize>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T: Message> Builder<T> {
    /// The most items the queue holds at once; 0 (the default) means as many as fit in the
    /// ring, as Python's `maxsize <= 0` means "unbounded".
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// Bytes of ring (rounded up to a power of two, at least 4 KiB; default
    /// [`DEFAULT_CAPACITY`]). An item's encoding plus 24 bytes must fit in it.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// The largest item, in encoded bytes, copied into the ring itself; a larger one travels
    /// beside it, its bytes in a memfd of its own (default: what fits in an eighth of the
    /// ring, so that big items neither crowd out small ones nor wait long for room). At most
    /// half the ring. A ring that carries large messages one after another, as a pipe does,
    /// is faster with them inside: two copies through memory already mapped, against a
    /// memfd's fresh pages.
    ///
    /// ```
    /// let q = multiprocessing::queues::Queue::<Vec<u8>>::builder()
    ///     .capacity(4 << 20)
    ///     .in_ring_limit(2 << 20)
    ///     .build()?;
    /// q.put(vec![7; 1 << 20])?; // one frame in the ring
    /// assert_eq!(q.get()?.len(), 1 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_ring_limit(mut self, bytes: usize) -> Self {
        self.in_ring = Some(bytes);
        self
    }

    /// Makes the queue.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a capacity past 2³¹ bytes; [`Error::Region`] if the
    /// shared memory cannot be made.
    pub fn build(self) -> Result<Queue<T>> {
        let cap = self
            .capacity
            .max(ring::MIN_CAPACITY)
            .checked_next_power_of_two()
            .filter(|&c| c <= 1 << 31)
            .ok_or(Error::InvalidArgument(
                "ring capacity must be at most 2 GiB",
            ))?;
        let region = Region::create(spec::<T>(cap))?;
        let (tx, rx) = sys::side_pair().map_err(|e| os("socketpair", e))?;
        let bell = sys::doorbell().map_err(|e| os("eventfd", e))?;
        let config = ring::Config {
            maxsize: self.maxsize as u64,
            // (In frame bytes: the item's own plus header and owner.)
            in_ring: self
                .in_ring
                .map_or(cap / BIG_SHARE, |bytes| ring::frame_size(bytes, true)),
        };
        Queue::from_parts(region, tx, rx, bell, Some(config))
    }

    /// Makes a [`JoinableQueue`](crate::JoinableQueue) with this bound and ring.
    ///
    /// ```
    /// let q = multiprocessing::queues::Queue::<u64>::builder()
    ///     .capacity(64 << 10)
    ///     .build_joinable()?;
    /// assert_eq!(q.queue().capacity(), 64 << 10);
    /// q.put(1)?;
    /// assert_eq!(q.unfinished(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`build`](Builder::build).
    pub fn build_joinable(self) -> Result<crate::JoinableQueue<T>> {
        self.build().map(crate::JoinableQueue::over)
    }

    /// Makes a [`SimpleQueue`](crate::SimpleQueue) with this bound and ring.
    ///
    /// ```
    /// let q = multiprocessing::queues::Queue::<u64>::builder()
    ///     .maxsize(1)
    ///     .build_simple()?;
    /// q.put(1)?;
    /// assert!(!q.empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`build`](Builder::build).
    pub fn build_simple(self) -> Result<crate::SimpleQueue<T>> {
        self.build().map(crate::SimpleQueue::over)
    }
}

/// How long a call may wait. It becomes a deadline only once the call has to wait, so a
/// call that succeeds at once reads no clock (a reading costs as much as a whole put).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Within {
    Forever,
    Now,
    Time(Duration),
}

impl Within {
    /// The deadline, from now (`None`: never, also for a timeout past the clock's range).
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Within::Forever => None,
            Within::Now => Some(Instant::now()),
            Within::Time(timeout) => Instant::now().checked_add(timeout),
        }
    }
}

fn spec<T>(cap: usize) -> Spec {
    Spec {
        fingerprint: Spec::fingerprint_of::<Marker<T>>(),
        size: CONTROL + cap,
        align: 64,
        len: cap,
    }
}

pub(crate) struct Inner {
    ring: Ring,
    // After `ring`, which points into its mapping.
    region: Region,
    /// The side channel: big items and items with descriptors are sent on `tx` and
    /// arrive, in the order of their frames, on `rx` (see [`BIG_SHARE`]).
    tx: OwnedFd,
    rx: OwnedFd,
    closed: AtomicBool,
    /// Set by the tests that must see every wake-up (see [`Queue::owner_checks`]).
    #[cfg(test)]
    checks_stretched: AtomicBool,
}

/// A big item's reference, the payload of its frame: its number in the side channel, and
/// the length of its bytes.
const BIG_REF: usize = 16;

/// Python's `multiprocessing.Queue`: a multi-producer, multi-consumer FIFO between
/// processes, in a ring of frames in shared memory.
///
/// - Clone the handle for threads; send it to a child (it is a [`Message`], fork inherits
///   it): every copy is the same queue.
/// - A `put` that returned `Ok` has its item in shared memory already: there is no feeder
///   thread, so nothing is left to flush when a process exits, and Python's `join_thread`
///   and `cancel_join_thread` have nothing to do here.
/// - Order is FIFO per producer (per thread), as in Python; items from different producers
///   interleave.
/// - A process killed in the middle of a `put` never leaves a torn item: its item was never
///   put. A process killed in the middle of a `get` loses the one item it was taking, and
///   nothing else: exactly the item whose frame it had claimed (a `get` that has claimed a
///   frame but not returned it). Neither wedges the others: the room their frames held comes
///   back once a producer needing it (or a consumer finding nothing), having waited 10 ms,
///   has checked that the process is dead. A process is told dead by its pid, pid namespace
///   and start time, so a reused pid is never mistaken for it; a checker in another pid
///   namespace never judges, and the frame waits for one that can.
///
/// ```
/// let q = multiprocessing::queues::Queue::<String>::new()?;
/// q.put("hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// assert!(matches!(q.try_get(), Err(multiprocessing::queues::Error::Empty)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    inner: Arc<Inner>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("qsize", &self.inner.ring.items())
            .field("maxsize", &self.inner.ring.maxsize())
            .field("capacity", &self.inner.ring.capacity())
            .finish()
    }
}

impl<T: Message> Queue<T> {
    /// A queue bounded only by its ring ([`DEFAULT_CAPACITY`] bytes).
    ///
    /// # Errors
    /// [`Error::Region`] if the shared memory cannot be made.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A queue of at most `maxsize` items (0: unbounded), Python's `Queue(maxsize)`.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        Self::builder().maxsize(maxsize).build()
    }

    /// Set the bound and ring size, then [`build`](Builder::build).
    pub fn builder() -> Builder<T> {
        Builder {
            maxsize: 0,
            capacity: DEFAULT_CAPACITY,
            in_ring: None,
            _type: PhantomData,
        }
    }

    /// `config`: `Some` when made here (writes it), `None` when attached.
    fn from_parts(
        region: Region,
        tx: OwnedFd,
        rx: OwnedFd,
        bell: OwnedFd,
        config: Option<ring::Config>,
    ) -> Result<Self> {
        // Descriptors made here are what they are; received ones are checked (five system
        // calls, a fifth of making a queue).
        let made_here = config.is_some();
        if !made_here && (!sys::is_side_socket(tx.as_fd()) || !sys::is_side_socket(rx.as_fd())) {
            return Err(Error::Region(mp_sync::Error::BadRegion(
                "a queue's side channel must be a pair of unix seqpacket sockets".into(),
            )));
        }
        if !made_here && !sys::is_doorbell(bell.as_fd()) {
            return Err(Error::Region(mp_sync::Error::BadRegion(
                "a queue's doorbell must be an eventfd".into(),
            )));
        }
        let cap = region.spec().len;
        if !cap.is_power_of_two() || !(ring::MIN_CAPACITY..=1 << 31).contains(&cap) {
            return Err(Error::Region(mp_sync::Error::BadRegion(format!(
                "a queue ring of {cap} bytes"
            ))));
        }
        region.expect(spec::<T>(cap))?;
        // SAFETY: the region maps `spec.size = CONTROL + cap` bytes from its 64-aligned
        // payload (checked by `Region::create`/`attach` and `expect` above) for as long as
        // `Inner` holds the region, which outlives the ring beside it.
        let bytes = unsafe { Bytes::new(region.payload(), CONTROL + cap) };
        let ring = Ring::new(bytes, cap, config, bell);
        Ok(Queue {
            inner: Arc::new(Inner {
                ring,
                region,
                tx,
                rx,
                closed: AtomicBool::new(false),
                #[cfg(test)]
                checks_stretched: AtomicBool::new(false),
            }),
            _type: PhantomData,
        })
    }

    fn ring(&self) -> &Ring {
        &self.inner.ring
    }

    /// The owner checks' periods, which also bound every sleep: a wake-up missed would cost
    /// a period. Tests that must see each wake-up stretch them past their own deadlines (on
    /// their queue alone), so that a missed one fails them instead of only slowing them.
    fn owner_checks(&self) -> (Duration, Duration) {
        #[cfg(test)]
        if self.inner.checks_stretched.load(Ordering::Relaxed) {
            return (Duration::from_secs(3600), Duration::from_secs(3600));
        }
        (FIRST_OWNER_CHECK, OWNER_CHECK)
    }

    /// Puts `item`, waiting for room as long as it takes.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::TooLarge`], [`Error::CarriesDescriptors`],
    /// [`Error::Codec`] (the item cannot be encoded), [`Error::Corrupted`]; the item comes
    /// back in the error.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Within::Forever)
    }

    /// Puts `item` if there is room now.
    ///
    /// # Errors
    /// [`Error::Full`], or any error of [`Queue::put`]; the item comes back in the error.
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Within::Now)
    }

    /// Puts `item`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Full`] after the timeout, or any error of [`Queue::put`]; the item comes back
    /// in the error.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Within::Time(timeout))
    }

    /// Takes the oldest item, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Codec`] when the bytes taken do not decode as a `T` (that
    /// item is lost; the next `get` goes on); [`Error::Corrupted`].
    pub fn get(&self) -> Result<T> {
        self.get_until(Within::Forever)
    }

    /// Takes an item if one is there now.
    ///
    /// # Errors
    /// [`Error::Empty`], or any error of [`Queue::get`].
    pub fn try_get(&self) -> Result<T> {
        self.get_until(Within::Now)
    }

    /// Takes an item, waiting at most `timeout` for one.
    ///
    /// # Errors
    /// [`Error::Empty`] after the timeout, or any error of [`Queue::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Within::Time(timeout))
    }

    /// How many items are in the queue: put (or being put) and not yet taken. A snapshot,
    /// as in Python: other processes may change it before the caller looks. It counts a
    /// `put` from the moment it has room, so it may count an item still being copied in.
    pub fn qsize(&self) -> usize {
        let ring = self.ring();
        if ring.counting() && !ring.recount_owed() {
            return ring.items() as usize;
        }
        // An unbounded queue nobody polls keeps no count (one write fewer per item, on a
        // line both sides share), and a count owed a recount may be off: count the frames
        // instead.
        self.snapshot(|| ring.count()).unwrap_or(0) as usize
    }

    /// Whether no item could be taken right now (a snapshot; exact at the moment it looks,
    /// unless the consumers' lock was held throughout 10 ms: then a look without it, which
    /// a `get` under way may make stale at once; the same goes for [`qsize`](Queue::qsize)
    /// on an unbounded queue, which counts the frames).
    pub fn empty(&self) -> bool {
        let ring = self.ring();
        self.snapshot(|| ring.any_ready())
            .map(|ready| !ready)
            .unwrap_or(false)
    }

    /// `look` at the frames under the consumers' lock, if it is had within
    /// [`SNAPSHOT_WAIT`]; else without it. A look without the lock reads the shared words
    /// as any hostile write leaves them (atomically, every bound checked), so it is
    /// memory-safe, only maybe stale; it repairs nothing, and a ring that looks corrupted
    /// then (a frame changing under it) is reported as an error, not reset.
    fn snapshot<R>(&self, look: impl Fn() -> std::result::Result<R, Corrupt>) -> Result<R> {
        let lock = self.ring().get_lock().passing();
        match with_lock_until(self, lock, Some(Instant::now() + SNAPSHOT_WAIT), &look)? {
            Some(seen) => Ok(seen),
            None => look().map_err(|Corrupt(why)| Error::Corrupted(why)),
        }
    }

    /// Whether `maxsize` items are in (always false for an unbounded queue, whose puts wait
    /// only for bytes of ring). A snapshot.
    pub fn full(&self) -> bool {
        let maxsize = self.ring().maxsize();
        maxsize != 0 && self.ring().items() >= maxsize
    }

    /// The item bound (0: none).
    pub fn maxsize(&self) -> usize {
        self.ring().maxsize() as usize
    }

    /// Bytes of ring.
    pub fn capacity(&self) -> usize {
        self.ring().capacity()
    }

    /// Closes this handle and its clones in this process: later `put`s and `get`s through
    /// them fail with [`Error::Closed`]. Other processes' handles, and items already put,
    /// are untouched (as in Python, `close` speaks for the calling process only).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
    }

    /// Whether [`close`](Queue::close) was called on this handle or a clone.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Runs `f` holding the producers' lock, as a `put` does while it reserves room: for
    /// tests of crates built on queues that kill a process at that moment. Not part of the
    /// API.
    #[doc(hidden)]
    pub fn __with_put_lock<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        with_lock(self, self.ring().put_lock(), || Ok(f()))
    }

    /// Puts an item already encoded — its bytes and the descriptors that go with them — as
    /// one frame, for transports built on a queue (a pipe on two rings, say). Waits for room
    /// at most `timeout` (`None`: as long as it takes; then [`Error::Full`]); with a `peer`, a
    /// stream socket whose other end the consumers hold, whose hang-up (every holder closed
    /// it, or died) ends the wait with [`Error::Disconnected`]. Its bytes are not checked to be a `T`: a `get` that cannot
    /// decode them fails, and the next goes on.
    ///
    /// ```
    /// let q = multiprocessing::queues::Queue::<String>::new()?;
    /// let frame = multiprocessing::codec::Frame::encode("raw")?;
    /// q.put_raw(&frame.bytes, &frame.fds, None, None)?;
    /// assert_eq!(q.get()?, "raw");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Full`], [`Error::Closed`], [`Error::Disconnected`], [`Error::Corrupted`],
    /// [`Error::Lost`], [`Error::InvalidArgument`] (63 descriptors or more), [`Error::Os`].
    pub fn put_raw(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        timeout: Option<Duration>,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let within = timeout.map_or(Within::Forever, Within::Time);
        self.put_parts(bytes, fds, within, peer)
    }

    /// Takes the next item's frame as it is — bytes and descriptors, not decoded — waiting at
    /// most `timeout` (`None`: as long as it takes), for transports built on a queue. With a
    /// `peer` (see [`put_raw`](Queue::put_raw)) a consumer that waits sleeps on the doorbell
    /// beside the peer's socket, and once the peer has hung up, takes what it finished
    /// putting and then fails with [`Error::Disconnected`].
    ///
    /// ```
    /// let q = multiprocessing::queues::Queue::<String>::new()?;
    /// q.put("framed".to_string())?;
    /// let frame = q.get_raw(Some(std::time::Duration::ZERO), None)?;
    /// assert_eq!(frame.decode::<String>()?, "framed");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Empty`] after the timeout, [`Error::Disconnected`], or any error of
    /// [`Queue::get`] but decoding.
    pub fn get_raw(
        &self,
        timeout: Option<Duration>,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<Frame> {
        let mut frame = Frame::new();
        self.get_raw_into(&mut frame, timeout, peer, usize::MAX)?;
        Ok(frame)
    }

    /// [`get_raw`](Queue::get_raw) into `frame`, whose buffer is reused (a receiver of large
    /// items in a loop then allocates nothing); it is cleared first. An item of more than
    /// `max_len` bytes is taken and dropped, and the call fails with [`Error::OverLimit`]:
    /// one beside the ring before its bytes are read, one in the ring (at most the ring's
    /// in-ring limit) before it is copied out, but for a small one (1 KiB at most).
    ///
    /// ```
    /// let q = multiprocessing::queues::Queue::<Vec<u8>>::new()?;
    /// let mut frame = multiprocessing::codec::Frame::new();
    /// for n in [100, 200] {
    ///     q.put(vec![1; n])?;
    ///     q.get_raw_into(&mut frame, None, None, usize::MAX)?;
    ///     assert!(frame.bytes.len() > n);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`get_raw`](Queue::get_raw), and [`Error::OverLimit`]; `frame` is then empty.
    pub fn get_raw_into(
        &self,
        frame: &mut Frame,
        timeout: Option<Duration>,
        peer: Option<BorrowedFd<'_>>,
        max_len: usize,
    ) -> Result<()> {
        frame.clear();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let ring = self.ring();
        let result = match self.now(ring.get_lock(), || ring.claim_now(None, &mut frame.bytes)) {
            Some(Ok(_)) => over_limit(frame.bytes.len(), max_len),
            Some(Err(e)) => Err(e),
            None => {
                let within = timeout.map_or(Within::Forever, Within::Time);
                self.take_waiting(frame, within.deadline(), peer, max_len)
            }
        };
        if result.is_err() {
            frame.clear();
        }
        result
    }

    /// Inline, as [`Queue::get_until`] is: its fast path is short, and a call of it would
    /// cost a put saving and restoring the caller's registers.
    #[inline(always)]
    fn put_until(&self, item: T, within: Within) -> Result<(), PutError<T>> {
        match self.put_frame(&item, within) {
            Ok(()) => Ok(()),
            Err(error) => Err(PutError { error, item }),
        }
    }

    /// Encodes and puts `item`.
    ///
    /// The fast path (a short item, the side biased to this thread, room at `tail`) is all
    /// that is inline here; everything else goes through functions of its own, so that this
    /// one saves few registers and writes no stack but the item's encoding.
    #[inline(always)]
    pub(crate) fn put_frame(&self, item: &T, within: Within) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        // A short item is encoded on the stack (zeros after it: it is copied into the ring
        // a word at a time), with no frame to lend and give back.
        let mut short = [0u8; ring::SHORT];
        // (`Encode` is for anyone to implement: a length past the buffer is not believed.)
        let Some(len) = item
            .encode_small(&mut short)
            .filter(|&len| len <= ring::SHORT)
        else {
            return self.put_large(item, within);
        };
        let ring = self.ring();
        match ring.put_lock().enter_biased_token() {
            // The side is this thread's: [`Queue::now`]'s biased case, with the commonest
            // outcome first and nothing to hand back for it but yes.
            Some(inside) => {
                // (A polled queue counts its items: the short path leaves it to the rest.)
                if ring.put_short_from(&short, len) {
                    inside.leave();
                    return Ok(());
                }
                self.put_short_biased(inside, &short, len, within)
            }
            None => self.put_short_unbiased(&short, len, within),
        }
    }

    /// The rest of a biased put of a short item that the short path did not take (a
    /// counted or polled queue, no room at `tail`): the general operation, inside the same
    /// entry, then a wait if need be.
    #[inline(never)]
    fn put_short_biased(
        &self,
        inside: Inside<'_>,
        short: &[u8; ring::SHORT],
        len: usize,
        within: Within,
    ) -> Result<()> {
        match self.now_inside(inside, || self.ring().put_small(&short[..len])) {
            Some(done) => done.map(drop),
            None => self.put_encoded(&short[..len], &[], within.deadline(), None),
        }
    }

    /// A put of a short item by a thread that does not hold the side biased.
    #[inline(never)]
    fn put_short_unbiased(
        &self,
        short: &[u8; ring::SHORT],
        len: usize,
        within: Within,
    ) -> Result<()> {
        let ring = self.ring();
        match self.now(ring.put_lock(), || ring.put_short_now(short, len)) {
            Some(done) => done.map(drop),
            None => self.put_encoded(&short[..len], &[], within.deadline(), None),
        }
    }

    /// A put of an item whose encoding is not short (or has descriptors).
    #[inline(never)]
    fn put_large(&self, item: &T, within: Within) -> Result<()> {
        let mut frame = Scratch::take();
        item.encode(&mut frame)?;
        self.put_parts(&frame.bytes, &frame.fds, within, None)
    }

    /// Puts an encoded item: a small one at once if the producers' lock is free (the common
    /// case, kept lean), else by [`put_encoded`](Queue::put_encoded), waiting `within`.
    #[inline]
    fn put_parts(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        within: Within,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let len = bytes.len();
        if (len <= ring::SHORT
            || (len <= ring::SMALL && ring::frame_size(len, true) <= self.ring().in_ring_limit()))
            && fds.is_empty()
            && let Some(done) =
                self.now(self.ring().put_lock(), || self.ring().put_small_now(bytes))
        {
            return done.map(drop);
        }
        self.put_encoded(bytes, fds, within.deadline(), peer)
    }

    /// Puts an encoded item, waiting for room until `deadline`.
    #[inline(never)]
    fn put_encoded(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        deadline: Option<Instant>,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let ring = self.ring();
        let len = bytes.len();
        if !fds.is_empty() || ring::frame_size(len, true) > ring.in_ring_limit() {
            return self.put_big(bytes, fds, deadline, peer);
        }
        if len <= ring::SMALL {
            let first = self.room(deadline, peer, || ring.put_small_now(bytes))?;
            if first {
                self.ring_bell();
            }
            return Ok(());
        }
        let slot = self
            .reserve(len, false, deadline, peer, |_| Ok(true))?
            .ok_or(Error::Full)?;
        ring.fill(slot, bytes);
        let published = ring.publish(slot);
        if slot.first {
            self.ring_bell();
        }
        if published { Ok(()) } else { Err(Error::Lost) }
    }

    /// [`Queue::now`] for a thread inside its biased side: runs `op` unless someone polls
    /// the doorbell, and leaves.
    #[inline]
    fn now_inside<R>(
        &self,
        inside: Inside<'_>,
        op: impl FnOnce() -> std::result::Result<Option<R>, Corrupt>,
    ) -> Option<Result<R>> {
        if self.polled() {
            inside.leave();
            return None;
        }
        let done = op();
        inside.leave();
        self.settle_now(done)
    }

    /// The common case of a put or a get, kept lean: runs `op` under `lock` if it is free
    /// now and nobody polls the doorbell. `None` when it is not, or `op` found no room or no
    /// item: the caller takes the general path.
    #[inline]
    fn now<R>(
        &self,
        lock: Lock<'_>,
        op: impl FnOnce() -> std::result::Result<Option<R>, Corrupt>,
    ) -> Option<Result<R>> {
        if let Some(inside) = lock.enter_biased_token() {
            // The side is this thread's (see `bias`): the same as below, with no look at
            // the lock's words.
            return self.now_inside(inside, op);
        }
        if !self.took_now(lock) {
            return None;
        }
        // Read under the lock: the doorbell is armed under both (see `AsFd`).
        if self.polled() {
            lock.release();
            return None;
        }
        let done = op();
        lock.release();
        self.settle_now(done)
    }

    /// What [`Queue::now`] gives for what its `op` gave.
    #[inline]
    fn settle_now<R>(&self, done: std::result::Result<Option<R>, Corrupt>) -> Option<Result<R>> {
        match done {
            Ok(Some(value)) => Some(Ok(value)),
            Ok(None) => None,
            Err(Corrupt(why)) => {
                // (The fast path is taken by calls of every kind: a bounded reset is
                // enough, as a reset not done is tried again by the next call.)
                self.reset(Some(Instant::now()));
                Some(Err(Error::Corrupted(why)))
            }
        }
    }

    /// Whether the caller now holds `lock`, taken only if free, with no repair pending (a
    /// lock whose owner died is released and the ring repaired, and the caller told no).
    #[inline]
    fn took_now(&self, lock: Lock<'_>) -> bool {
        match lock.try_acquire() {
            Acquire::Acquired => true,
            Acquire::OwnerDied => {
                // (Taken by calls of every kind: the repair waits for the other lock no
                // longer than a `try_` call may.)
                self.release_after_death(lock, Some(Instant::now()));
                false
            }
            Acquire::TimedOut => false,
        }
    }

    /// Waits for room and runs `put` under the producers' lock (it gives `None` while there
    /// is no room); [`Error::Full`] once `deadline` passes.
    fn room<R>(
        &self,
        deadline: Option<Instant>,
        peer: Option<BorrowedFd<'_>>,
        mut put: impl FnMut() -> std::result::Result<Option<R>, Corrupt>,
    ) -> Result<R> {
        let ring = self.ring();
        self.wait_for_room(deadline, peer, |waited| {
            loop {
                let Some(done) = with_lock_until(self, ring.put_lock(), deadline, &mut put)? else {
                    return Ok(None); // the lock was not had in time
                };
                if done.is_some() {
                    return Ok(done);
                }
                // No room by the count, which may be off since a death: recount first.
                if ring.recount_owed() && ring.maxsize() != 0 {
                    self.repair(deadline);
                    if !ring.recount_owed() {
                        continue;
                    }
                }
                if !self.make_room(deadline, waited)? {
                    return Ok(None);
                }
            }
        })?
        .ok_or(Error::Full)
    }

    /// [`wait`]s for room: `attempt` until it gives a value or `deadline` passes, asleep on
    /// the producers' word between tries. A producer counted asleep passes through the
    /// consumers' lock (reclaiming on the way) before each try: consumers free room and
    /// look for sleeping producers under that lock, with no fence between, so either one
    /// saw this producer counted or it sees their room (see [`Ring::claim`]).
    fn wait_for_room<R>(
        &self,
        deadline: Option<Instant>,
        peer: Option<BorrowedFd<'_>>,
        mut attempt: impl FnMut(Waited) -> Result<Option<R>>,
    ) -> Result<Option<R>> {
        let ring = self.ring();
        wait(
            ring.freed(),
            ring.put_sleepers(),
            deadline,
            self.owner_checks(),
            Watch { bell: None, peer },
            |waited| {
                if waited != Waited::Briefly {
                    self.make_room(deadline, waited)?;
                }
                attempt(waited)
            },
        )
    }

    /// Reclaims (and, after a while, buries the dead) under the consumers' lock; whether
    /// that freed anything.
    ///
    /// Not while the caller only spins: a consumer at work moves `head` itself as it takes
    /// frames, and a producer reading `head` again sees the room come back, where taking the
    /// consumers' lock (even trying to) would take its line from under the consumer on every
    /// try. Frames taken out of order and left `DONE` before `head` wait for the first
    /// attempt made asleep, 20 µs later, or for the last try of a call whose time is up (a
    /// `try_put`), which tries the lock once.
    fn make_room(&self, deadline: Option<Instant>, waited: Waited) -> Result<bool> {
        let ring = self.ring();
        let reclaim = || {
            if waited == Waited::Long {
                ring.bury_dead()
            } else {
                ring.reclaim()
            }
        };
        let lock = ring.get_lock();
        let freed = match waited {
            Waited::Briefly if deadline.is_some_and(|d| Instant::now() >= d) => {
                locked(self, lock, lock.try_acquire(), deadline, reclaim)?
            }
            Waited::Briefly => return Ok(false),
            // A pass through the lock (see `wait_for_room`), bounded as in
            // `get_waiting`.
            Waited::Asleep => {
                with_lock_until(self, lock.passing(), Some(pass_by(deadline)), reclaim)?
            }
            Waited::Long => with_lock_until(self, lock, deadline, reclaim)?,
        };
        Ok(freed == Some(true))
    }

    /// Makes the readiness of the queue's descriptor (see `AsFd`) match the queue now:
    /// unreadable if no item is ready, readable if one is (under the consumers' lock, waited
    /// for 10 ms at most). For a caller woken by the descriptor that then found nothing to
    /// take: the doorbell is a hint, and a ring that came late, after the item was taken,
    /// leaves it readable until the next `get` finds the queue empty.
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// let q = multiprocessing::queues::Queue::<u8>::new()?;
    /// let _ = q.as_fd(); // arms the doorbell
    /// q.resync_doorbell();
    /// # Ok::<(), multiprocessing::queues::Error>(())
    /// ```
    pub fn resync_doorbell(&self) {
        if !self.polled() {
            return;
        }
        let lock = self.ring().get_lock().passing();
        let _ = with_lock_until(self, lock, Some(Instant::now() + SNAPSHOT_WAIT), || {
            self.quiet_bell()
        });
    }

    /// Whether some process waits (or has waited) on the queue's descriptor.
    fn polled(&self) -> bool {
        self.ring().word32(ring::POLLERS).load(Ordering::Relaxed) != 0
    }

    /// After a put that made the queue non-empty: makes the doorbell readable, if anyone
    /// polls it.
    fn ring_bell(&self) {
        if self.polled() {
            sys::ring(self.ring().bell());
        }
    }

    /// Under the consumers' lock, after a get that found the queue empty or left it so:
    /// silences the doorbell, then rings it again if an item came meanwhile (a producer's
    /// ring may have landed just before the silencing).
    fn quiet_bell(&self) -> std::result::Result<(), Corrupt> {
        if self.polled() {
            let ring = self.ring();
            if ring.recount_owed() {
                // Paid here if the producers' lock is free (a try, no wait): with both
                // locks, a repair.
                let put = ring.put_lock().passing();
                if put.try_acquire().is_held() {
                    self.mend();
                    put.release();
                }
            }
            sys::silence(self.ring().bell());
            if self.ring().any_ready()? {
                sys::ring(self.ring().bell());
            }
        }
        Ok(())
    }

    /// Waits for a frame of `len` bytes and reserves it, for `me`; under the producers' lock,
    /// `then` may use the slot (a big item sends its message there) and says whether to keep
    /// it (`false`: no room in the side channel, abandon and wait as for room).
    fn reserve(
        &self,
        len: usize,
        big: bool,
        deadline: Option<Instant>,
        peer: Option<BorrowedFd<'_>>,
        mut then: impl FnMut(ring::Slot) -> Result<bool>,
    ) -> Result<Option<ring::Slot>> {
        let ring = self.ring();
        let me = Owner::me();
        self.wait_for_room(deadline, peer, |waited| {
            loop {
                let reserved = with_lock_until(self, ring.put_lock(), deadline, || {
                    Ok(match ring.reserve(len, big, me)? {
                        None => Ok(None),
                        Some(slot) => match then(slot) {
                            Ok(true) => Ok(Some(Some(slot))),
                            Ok(false) => {
                                ring.abandon(slot);
                                Ok(Some(None))
                            }
                            Err(e) => {
                                ring.abandon(slot);
                                Err(e)
                            }
                        },
                    })
                })?;
                let Some(reserved) = reserved else {
                    return Ok(None); // the lock was not had in time
                };
                match reserved? {
                    Some(Some(slot)) => return Ok(Some(slot)),
                    Some(None) => return Ok(None), // the side channel is full: wait
                    None => {
                        // Make room, then try once more if that freed anything.
                        if !self.make_room(deadline, waited)? {
                            return Ok(None);
                        }
                    }
                }
            }
        })
    }

    /// Puts an item through the side channel: its bytes in a memfd, sent with its
    /// descriptors as one message numbered like its frame, all under the producers' lock so
    /// the messages go out in the order of the frames.
    #[cold]
    fn put_big(
        &self,
        bytes: &[u8],
        fds: &[OwnedFd],
        deadline: Option<Instant>,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let frame_fds = fds;
        if frame_fds.len() >= sys::MAX_FDS {
            return Err(Error::InvalidArgument(
                "an item may own at most 63 file descriptors",
            ));
        }
        let memfd = rustix::fs::memfd_create(c"mp-queue-item", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| os("memfd_create", e.into()))?;
        let mut file = std::fs::File::from(memfd);
        file.write_all(bytes)
            .map_err(|e| os("write to a memfd", e))?;
        let mut fds: Vec<BorrowedFd<'_>> = vec![file.as_fd()];
        fds.extend(frame_fds.iter().map(AsFd::as_fd));
        let ring = self.ring();
        let mut published = false;
        let mut first = false;
        self.reserve(BIG_REF, true, deadline, peer, |slot| {
            let seq = ring.next_big();
            let mut reference = [0u8; BIG_REF];
            reference[..8].copy_from_slice(&seq.to_le_bytes());
            reference[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            if !sys::side_send(self.inner.tx.as_fd(), &reference, &fds)
                .map_err(|e| os("sendmsg on the side channel", e))?
            {
                return Ok(false);
            }
            ring.fill(slot, &reference);
            published = ring.publish(slot);
            first = slot.first;
            Ok(true)
        })?
        .ok_or(Error::Full)?;
        if first {
            self.ring_bell();
        }
        if published { Ok(()) } else { Err(Error::Lost) }
    }

    /// A get. The fast path (the side biased to this thread, a short item at `head`) is all
    /// that is inline here (see [`Queue::put_frame`]).
    #[inline(always)]
    fn get_until(&self, within: Within) -> Result<T> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let ring = self.ring();
        let Some(inside) = ring.get_lock().enter_biased_token() else {
            return self.get_unbiased(within);
        };
        // The side is this thread's: [`Queue::now`]'s biased case, with the commonest outcome
        // first: a short item at the head, copied to the stack and decoded from there.
        // (A polled queue counts its items: the short path leaves it to the rest.)
        let mut short = [0u8; ring::SHORT];
        if let Some(len) = ring.take_short_into(&mut short) {
            inside.leave();
            return Ok(T::decode_bytes(&short[..len])?);
        }
        self.get_biased(inside, within)
    }

    /// The rest of a biased get that the short path did not take (a counted or polled
    /// queue, an empty one, an item that is not short at the head): the general operation,
    /// inside the same entry, then a wait if need be.
    #[inline(never)]
    fn get_biased(&self, inside: Inside<'_>, within: Within) -> Result<T> {
        let mut frame = None;
        let now = self.now_inside(inside, || {
            // Into this thread's scratch frame, lent only now. Without an owner to record,
            // `claim` takes only a small item, copied under the lock.
            let frame = frame.insert(Scratch::take());
            Ok(self.ring().claim(None, &mut frame.bytes)?.map(|_| None))
        });
        self.got_now(now, &[], frame, within)
    }

    /// A get by a thread that does not hold the side biased.
    #[inline(never)]
    fn get_unbiased(&self, within: Within) -> Result<T> {
        let ring = self.ring();
        let mut short = [0u8; ring::SHORT];
        let mut frame = None;
        let now = self.now(ring.get_lock(), || match ring.take_short_into(&mut short) {
            Some(len) => Ok(Some(Some(len))),
            None => {
                let frame = frame.insert(Scratch::take());
                Ok(ring.claim(None, &mut frame.bytes)?.map(|_| None))
            }
        });
        self.got_now(now, &short, frame, within)
    }

    /// What a get without a wait found: a short item (its length in `short`), an item in
    /// `frame`, an error, or nothing yet (then it waits, until `within`).
    fn got_now(
        &self,
        now: Option<Result<Option<usize>>>,
        short: &[u8],
        frame: Option<Scratch>,
        within: Within,
    ) -> Result<T> {
        match now {
            Some(Ok(Some(len))) => Ok(T::decode_bytes(&short[..len])?),
            Some(Ok(None)) => Ok(T::decode(&mut frame.expect("lent for the claim"))?),
            Some(Err(e)) => Err(e),
            None => {
                let mut frame = frame.unwrap_or_else(Scratch::take);
                frame.clear();
                self.get_waiting(&mut frame, within.deadline())
            }
        }
    }

    /// A get that may wait, until `deadline`, into `frame` (empty).
    #[inline(never)]
    fn get_waiting(&self, frame: &mut Frame, deadline: Option<Instant>) -> Result<T> {
        self.take_waiting(frame, deadline, None, usize::MAX)?;
        Ok(T::decode(frame)?)
    }

    /// Takes an item's frame, waiting until `deadline`, into `frame` (empty); with a `peer`,
    /// asleep on the doorbell beside it, until it hangs up.
    fn take_waiting(
        &self,
        frame: &mut Frame,
        deadline: Option<Instant>,
        peer: Option<BorrowedFd<'_>>,
        max_len: usize,
    ) -> Result<()> {
        let ring = self.ring();
        {
            let me = Owner::me();
            let checks = self.owner_checks();
            let watch = match peer {
                Some(peer) => Watch {
                    bell: Some((ring.bell_sleepers(), ring.bell())),
                    peer: Some(peer),
                },
                None => Watch::default(),
            };
            let taken = wait(
                ring.published(),
                ring.get_sleepers(),
                deadline,
                checks,
                watch,
                |waited| {
                    let waited_long = waited == Waited::Long;
                    if waited_long {
                        self.rescue_put_lock();
                    } else if waited == Waited::Asleep {
                        // Counted asleep: pass through the producers' lock before looking,
                        // since small puts publish and look for sleepers under it with no
                        // fence between (see `Ring::put_small`). A producer holding the side
                        // biased is taken back (see `bias`): it leaves its operation, if inside
                        // one, within microseconds while it runs; so does a running holder of
                        // the lock. One that keeps it past `PASS_BY` is stopped,
                        // dead or descheduled, and the look goes on without the pass (an item
                        // already there is not held back by a stopped producer): a small put
                        // it then finishes looks for sleepers 10 ms after this consumer
                        // counted itself, and sees it; had it looked before, its frame,
                        // published before that look, has long been visible to ours. The
                        // model does not promise that timing; the sleep below is bounded by
                        // the next owner check all the same.
                        let pass = ring.put_lock().passing();
                        with_lock_until(self, pass, Some(pass_by(deadline)), || Ok(()))?;
                    }
                    with_lock_until(self, ring.get_lock(), deadline, || {
                        if waited_long {
                            // Frames of the dead still count in `qsize` until buried.
                            ring.bury_dead()?;
                        }
                        let claimed = ring.claim_now(Some(me), &mut frame.bytes)?;
                        if claimed.is_none() || ring.items() == 0 {
                            self.quiet_bell()?;
                        }
                        Ok(match claimed {
                            None => Ok(None),
                            Some(claim) if claim.big => self.take_big(claim).map(Some),
                            Some(claim) if claim.copied => Ok(Some(Taken::Copied)),
                            Some(claim) => Ok(Some(Taken::Small(claim))),
                        })
                    })?
                    .unwrap_or(Ok(None)) // the lock was not had in time
                },
            )?
            .ok_or(Error::Empty)?;
            if peer.is_some() && self.polled() {
                // This consumer slept on the doorbell, and silenced it each time: an item left
                // after its take must keep the descriptor readable for `wait`.
                self.resync_doorbell();
            }
            match taken {
                Taken::Copied => over_limit(frame.bytes.len(), max_len)?,
                Taken::Small(claim) => {
                    if claim.len() > max_len {
                        ring.release(claim);
                        return over_limit(claim.len(), max_len);
                    }
                    ring.read(claim, &mut frame.bytes);
                    ring.release(claim);
                }
                Taken::Big { memfd, len, fds } => {
                    over_limit(usize::try_from(len).unwrap_or(usize::MAX), max_len)?;
                    let mut file = std::fs::File::from(memfd);
                    let size = file
                        .metadata()
                        .map_err(|e| os("fstat of an item's memfd", e))?
                        .len();
                    if size != len {
                        return Err(Error::Corrupted(format!(
                            "an item's memfd holds {size} bytes, its reference says {len}"
                        )));
                    }
                    file.rewind().map_err(|e| os("lseek", e))?;
                    frame.bytes.reserve_exact(len as usize);
                    file.read_to_end(&mut frame.bytes)
                        .map_err(|e| os("read of an item's memfd", e))?;
                    frame.fds = fds;
                }
            }
            Ok(())
        }
    }

    /// Under the consumers' lock, for a claimed big frame: reads its reference, releases
    /// the frame, and takes its message from the side channel. Messages numbered lower are
    /// of frames whose producer died after sending (claims go in frame order, and each takes
    /// its message under this lock): closed and passed over.
    fn take_big(&self, claim: Claim) -> Result<Taken> {
        let ring = self.ring();
        let mut reference = Vec::new();
        ring.read(claim, &mut reference);
        ring.release(claim);
        let (Some(seq), Some(len)) = (
            reference.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)),
            reference
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
        ) else {
            return Err(Error::Corrupted("a big item's reference is short".into()));
        };
        let rx = self.inner.rx.as_fd();
        loop {
            let peeked = sys::side_peek::<BIG_REF>(rx).map_err(|e| os("recv (peek)", e))?;
            let Some((head, _)) = peeked else {
                return Err(Error::Lost);
            };
            let number = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            if number > seq {
                // Ours never came (only a process writing into the queue's memory can do
                // that); leave the later one for its own frame.
                return Err(Error::Lost);
            }
            let got = sys::side_recv::<BIG_REF>(rx).map_err(|e| os("recvmsg", e))?;
            let Some((bytes, size, mut fds)) = got else {
                return Err(Error::Lost);
            };
            if number < seq || bytes != *reference.as_slice() || size != BIG_REF {
                continue; // an orphan (or garbage): its descriptors close here
            }
            if fds.is_empty() {
                return Err(Error::Corrupted("a big item came without its memfd".into()));
            }
            let memfd = fds.remove(0);
            return Ok(Taken::Big { memfd, len, fds });
        }
    }

    /// For a consumer that has waited a while: if a producer died holding the producers'
    /// lock (inside a small put), takes the lock over and repairs the ring, so its half-put
    /// frame stops counting as an item even when no producer comes to need its room.
    /// Taking the lock (even a free one) is also the pass through it that a consumer
    /// counted asleep makes before it looks for items (see `get_waiting`).
    fn rescue_put_lock(&self) {
        let lock = self.ring().put_lock();
        // Long enough for the lock to look at its owner's liveness (after 10 ms).
        match lock.acquire_timeout(Duration::from_millis(30)) {
            Acquire::OwnerDied => self.release_after_death(lock, None),
            Acquire::Acquired => {
                lock.release();
            }
            Acquire::TimedOut => {}
        }
    }

    /// Lets go of `lock`, just taken from a process that died holding it, then repairs the
    /// ring (within `deadline`, see [`Queue::repair`]). A dead producer's frame is buried
    /// and the producers' copy of `tail` made good first, before anyone else can take the
    /// lock: the dead may have moved `tail` and not its copy, and its half-put frame would
    /// hold back `head` for ever.
    fn release_after_death(&self, lock: Lock<'_>, deadline: Option<Instant>) {
        let ring = self.ring();
        if lock.same(&ring.put_lock()) && ring.bury_lock_holders().is_err() {
            // Corrupted: a reset needs both locks, and the consumers' is taken first. Spoil
            // the producers' copy instead, so that a producer coming before the repair below
            // copies again, finds the corruption and resets under both.
            ring.spoil_put();
        }
        lock.release();
        self.repair(deadline);
    }

    /// Repairs the ring after a process died holding one of its locks: under both locks,
    /// the dead producer's frame buried (again: see [`Queue::release_after_death`]) and the
    /// item count redone. A caller with a `deadline` waits for the locks no longer than it
    /// (or [`LOCK_GRACE`]): a live process may hold one for long (stopped, or named as owner
    /// by a lock word written over). What needs only the producers' lock was done when it was
    /// taken; the count, kept only for a bounded or polled queue, is then marked as owed a
    /// recount, which a producer short of room pays (see [`Queue::room`]), and until then
    /// every put rings the doorbell.
    fn repair(&self, deadline: Option<Instant>) {
        let ring = self.ring();
        if !self.with_both_locks(deadline, || self.mend()) && ring.counting() {
            ring.owe_recount();
        }
    }

    /// Runs `f` holding both locks (the consumers' first), each waited for until `deadline`
    /// (or [`LOCK_GRACE`]; for ever without one); whether it ran. A lock taken from the
    /// dead is not repaired here: both callers' `f` mend or reset the ring.
    fn with_both_locks(&self, deadline: Option<Instant>, f: impl FnOnce()) -> bool {
        let ring = self.ring();
        let get = take_until(ring.get_lock(), deadline);
        let put = if get.is_held() {
            take_until(ring.put_lock(), deadline)
        } else {
            Acquire::TimedOut
        };
        let both = get.is_held() && put.is_held();
        if both {
            f();
        }
        if put.is_held() {
            ring.put_lock().release();
        }
        if get.is_held() {
            ring.get_lock().release();
        }
        both
    }

    /// With both locks held: buries the frame of a producer that died inside a small put
    /// (none is under way: we hold the producers' lock), copies `tail` for the producers
    /// again and recounts the items; resets the ring if it is corrupted.
    fn mend(&self) {
        let ring = self.ring();
        if ring
            .bury_lock_holders()
            .and_then(|()| ring.recount())
            .is_err()
        {
            ring.reset();
        }
    }

    /// Drops every frame after corruption (see [`Ring::reset`]), with both locks held. A
    /// caller with a `deadline` (a `try_` or timed call) waits for them no longer than it
    /// (or [`LOCK_GRACE`]): a lock word written over to name a live stranger as its owner
    /// would otherwise hold it for ever. Without both locks nothing is reset, and that is
    /// safe: the corruption stays where the next call finds it again, and resets then.
    fn reset(&self, deadline: Option<Instant>) {
        let ring = self.ring();
        self.with_both_locks(deadline, || ring.reset());
    }

    pub(crate) fn word32(&self, offset: usize) -> &AtomicU32 {
        self.ring().word32(offset)
    }

    pub(crate) fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        self.ring().word(offset)
    }
}

/// `Ok` if an item of `len` bytes is within `max_len`.
fn over_limit(len: usize, max_len: usize) -> Result<()> {
    if len > max_len {
        Err(Error::OverLimit {
            len: len as u64,
            max: max_len as u64,
        })
    } else {
        Ok(())
    }
}

/// Whether `peer`, a stream socket, has hung up: every descriptor of its other end closed, by
/// `close` or by the death of every process that held one. The look that
/// [`Queue::put_raw`] and [`Queue::get_raw`] make of their `peer`, for transports that want
/// to make it between calls. Nothing is expected on the socket: bytes found there are read
/// and dropped (a bounded amount per look).
///
/// ```
/// use std::os::fd::AsFd;
/// let (a, b) = std::os::unix::net::UnixStream::pair()?;
/// assert!(!multiprocessing::queues::hung_up(a.as_fd()));
/// drop(b);
/// assert!(multiprocessing::queues::hung_up(a.as_fd()));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn hung_up(peer: BorrowedFd<'_>) -> bool {
    sys::hung_up(peer)
}

/// What a `get` took under the consumers' lock.
enum Taken {
    /// A small item, already copied into the scratch frame.
    Copied,
    /// A frame in the ring, to copy out and release.
    Small(Claim),
    /// A big item: its memfd and length, and the item's own descriptors.
    Big {
        memfd: OwnedFd,
        len: u64,
        fds: Vec<OwnedFd>,
    },
}

fn os(op: &'static str, e: std::io::Error) -> Error {
    Error::Os(op, e)
}

/// Runs `f` holding `lock`; repairs the ring afterwards if the lock's last owner died
/// holding it, and after corruption resets it and reports [`Error::Corrupted`].
fn with_lock<T: Message, R>(
    queue: &Queue<T>,
    lock: Lock<'_>,
    f: impl FnOnce() -> std::result::Result<R, Corrupt>,
) -> Result<R> {
    Ok(with_lock_until(queue, lock, None, f)?.expect("no deadline, no timeout"))
}

/// How long `qsize` and `empty` wait for the consumers' lock before they look without it:
/// a running holder lets go within microseconds; one that keeps it longer is stopped,
/// descheduled, or (a word written over) no process at all, and a snapshot must not wait
/// on it.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(10);

/// The least a timed operation waits for a lock, however near its deadline: a `try_get`
/// must not fail as empty only because another consumer held the lock for a moment.
const LOCK_GRACE: Duration = Duration::from_micros(100);

/// [`with_lock`], giving up (`None`) if the lock is not had by `deadline` (at least
/// [`LOCK_GRACE`] from now): a holder that is stopped, or that died where nobody can tell,
/// never makes a timed `put` or `get` overstay its timeout.
fn with_lock_until<T: Message, R>(
    queue: &Queue<T>,
    lock: Lock<'_>,
    deadline: Option<Instant>,
    f: impl FnOnce() -> std::result::Result<R, Corrupt>,
) -> Result<Option<R>> {
    locked(queue, lock, take_until(lock, deadline), deadline, f)
}

/// Takes `lock`: for ever with no `deadline`, else until it (or [`LOCK_GRACE`] from now).
fn take_until(lock: Lock<'_>, deadline: Option<Instant>) -> Acquire {
    match deadline {
        None => lock.acquire(),
        Some(d) => match lock.try_acquire() {
            Acquire::TimedOut => {
                lock.acquire_timeout(d.saturating_duration_since(Instant::now()).max(LOCK_GRACE))
            }
            took => took,
        },
    }
}

/// Runs `f` if `took` says the caller holds `lock`, then releases it, repairing the ring if
/// the lock's last owner died holding it, and resetting it after corruption.
fn locked<T: Message, R>(
    queue: &Queue<T>,
    lock: Lock<'_>,
    took: Acquire,
    deadline: Option<Instant>,
    f: impl FnOnce() -> std::result::Result<R, Corrupt>,
) -> Result<Option<R>> {
    if took == Acquire::TimedOut {
        return Ok(None);
    }
    let ring = queue.ring();
    let result = if took == Acquire::OwnerDied && lock.same(&ring.put_lock()) {
        // The dead producer may have moved `tail` and not the producers' copy of it, and
        // left its frame half put (see `Queue::release_after_death`).
        ring.bury_lock_holders().and_then(|()| f())
    } else {
        f()
    };
    lock.release();
    if took == Acquire::OwnerDied {
        queue.repair(deadline);
    }
    result.map(Some).map_err(|Corrupt(why)| {
        queue.reset(deadline);
        Error::Corrupted(why)
    })
}

/// The longest a process about to sleep waits to pass through the other side's lock.
const PASS_BY: Duration = Duration::from_millis(10);

/// The deadline of a pass through the other side's lock: [`PASS_BY`] from now, or the
/// caller's own if sooner.
fn pass_by(deadline: Option<Instant>) -> Instant {
    let soon = Instant::now() + PASS_BY;
    deadline.map_or(soon, |d| d.min(soon))
}

/// How long a [`wait`] has waited, as its `attempt` is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// The first attempt, or one made while spinning.
    Briefly,
    /// An attempt made with the caller counted as asleep.
    Asleep,
    /// Long enough to ask whether the owners of what blocks it are alive.
    Long,
}

/// Tries `attempt` until it gives a value or `deadline` passes (`None`: never). For the
/// first [`SPIN`] it tries again after growing pauses; then it sleeps on `word`, counted in
/// `sleepers`, so that whoever may make the attempt succeed bumps `word` and wakes it.
/// `attempt` is told how long the caller has waited ([`Waited`]).
///
/// With a [`Watch`], it sleeps on the doorbell beside a peer's socket instead, and ends with
/// [`Error::Disconnected`] once the peer has hung up and an attempt made after that still
/// found nothing.
fn wait<R>(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    deadline: Option<Instant>,
    (first_check, check): (Duration, Duration),
    watch: Watch<'_>,
    mut attempt: impl FnMut(Waited) -> Result<Option<R>>,
) -> Result<Option<R>> {
    if let Some(value) = attempt(Waited::Briefly)? {
        return Ok(Some(value));
    }
    let start = Instant::now();
    if deadline.is_some_and(|d| start >= d) {
        return Ok(None);
    }
    // Spin, trying again with a growing pause: a busy peer usually answers within
    // microseconds, and waking from a futex costs tens of them. (Nothing is written to tell
    // a spinner that an item came: only sleepers are told, so a busy queue writes no
    // wake-up word.)
    let spin_end = deadline.map_or(start + SPIN, |d| d.min(start + SPIN));
    let mut pause = 16u32;
    loop {
        for _ in 0..pause {
            std::hint::spin_loop();
        }
        if let Some(value) = attempt(Waited::Briefly)? {
            return Ok(Some(value));
        }
        if Instant::now() >= spin_end {
            break;
        }
        pause = (pause * 2).min(256);
    }
    let mut next_check = start + first_check;
    let mut gone = false;
    let awake = || {
        if let Some((count, _)) = watch.bell {
            count.fetch_sub(1, Ordering::SeqCst);
        }
        sleepers.fetch_sub(1, Ordering::SeqCst);
    };
    loop {
        // Sleep: count ourselves first, then look once more, so a waker either sees us or
        // we see its change. One asleep on the doorbell silences it after counting itself:
        // a ring for an item it does not see lands after that.
        sleepers.fetch_add(1, Ordering::SeqCst);
        if let Some((count, bell)) = watch.bell {
            count.fetch_add(1, Ordering::SeqCst);
            sys::silence(bell);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let seen = word.load(Ordering::SeqCst);
        let now = Instant::now();
        let long = now >= next_check;
        if long {
            next_check = now + check;
        }
        let result = attempt(if long { Waited::Long } else { Waited::Asleep });
        if !matches!(result, Ok(None)) {
            awake();
            return result;
        }
        if gone {
            // Looked once more after the hang-up: whatever the peer finished is taken.
            awake();
            return Err(Error::Disconnected);
        }
        let now = Instant::now();
        let mut timeout = next_check.saturating_duration_since(now);
        if let Some(d) = deadline {
            if now >= d {
                awake();
                return Ok(None);
            }
            timeout = timeout.min(d - now);
        }
        match (watch.bell, watch.peer) {
            (Some((_, bell)), peer) => gone = sys::sleep_on_bell(bell, peer, timeout),
            (None, Some(peer)) if sys::hung_up(peer) => gone = true,
            _ => sys::futex_wait(word, seen, Some(timeout)),
        }
        awake();
    }
}

/// What else a [`wait`] listens to (nothing, by default).
#[derive(Clone, Copy, Default)]
struct Watch<'a> {
    /// Sleep on the doorbell, counted in the second word, rather than on the futex word.
    bell: Option<(&'a AtomicU32, BorrowedFd<'a>)>,
    /// A stream socket whose hang-up ends the wait (see [`sys::hung_up`]).
    peer: Option<BorrowedFd<'a>>,
}

thread_local! {
    /// Each thread's frame for encoding a put and receiving a get: no allocation per item.
    static SCRATCH: std::cell::Cell<Option<Box<Frame>>> = const { std::cell::Cell::new(None) };
}

/// This thread's scratch frame, lent out empty and given back emptied when dropped (a fresh
/// one if it is lent already: an item whose encoding puts to a queue). A buffer grown past
/// 1 MiB is let go. (Lent rather than used inside a closure, so that no result has to pass
/// back out through one: on the hot path that copy cost more than the put.)
struct Scratch(Option<Box<Frame>>);

impl Scratch {
    #[inline]
    fn take() -> Scratch {
        let frame = SCRATCH.try_with(std::cell::Cell::take).ok().flatten();
        Scratch(Some(frame.unwrap_or_else(|| Box::new(Frame::new()))))
    }
}

impl std::ops::Deref for Scratch {
    type Target = Frame;

    #[inline]
    fn deref(&self) -> &Frame {
        self.0.as_deref().expect("lent until dropped")
    }
}

impl std::ops::DerefMut for Scratch {
    #[inline]
    fn deref_mut(&mut self) -> &mut Frame {
        self.0.as_deref_mut().expect("lent until dropped")
    }
}

impl Drop for Scratch {
    #[inline]
    fn drop(&mut self) {
        if let Some(mut frame) = self.0.take() {
            frame.clear();
            if frame.bytes.capacity() <= 1 << 20 {
                // A thread being torn down keeps nothing.
                let _ = SCRATCH.try_with(|cell| cell.set(Some(frame)));
            }
        }
    }
}

impl<T: Message> AsFd for Queue<T> {
    /// A descriptor that polls readable while the queue may hold an item, so that
    /// `connection::wait` (Python's `connection.wait`) can wait on queues beside connections and
    /// process sentinels.
    ///
    /// Asking for it arms the queue's doorbell, for every process, from then on: a `put`
    /// that makes the queue non-empty, and a `get` that finds it empty or leaves it so, then
    /// make one system call each (a busy queue that never empties makes none). Readable is
    /// a hint, as in Python: another consumer may take the item first, an item may still be
    /// being copied in, and a producer killed between publishing and ringing leaves the bell
    /// silent until the next put. Wait with a timeout where that matters. Arming waits for
    /// the queue's locks 10 ms at most, so a process holding one for good (stopped, say)
    /// never holds up a `wait` with a timeout.
    fn as_fd(&self) -> BorrowedFd<'_> {
        let pollers = self.ring().word32(ring::POLLERS);
        if pollers.load(Ordering::Relaxed) == 0 {
            // From here on every put and get keeps the count of items (they read the flag
            // under their lock); it is redone under both locks, which also repairs the ring
            // should either have been taken from the dead. A lock held throughout
            // `SNAPSHOT_WAIT` (a stopped process, or a word naming an owner nobody can
            // judge) is not waited for: the count is then owed a recount, and until it is
            // paid every put rings the bell and `qsize` counts the frames.
            let ring = self.ring();
            pollers.store(1, Ordering::SeqCst);
            self.repair(Some(Instant::now() + SNAPSHOT_WAIT));
            // Items put before the arming rang no bell (when unsure, ring: a hint).
            if self.snapshot(|| ring.any_ready()).unwrap_or(true) {
                sys::ring(self.ring().bell());
            }
        }
        self.ring().bell()
    }
}

/// What a queue handle sends: its region and the two ends of its side channel.
#[derive(Serialize)]
struct PartsOut<'a> {
    region: &'a Region,
    #[serde(serialize_with = "mp_codec::fd::serialize")]
    tx: &'a OwnedFd,
    #[serde(serialize_with = "mp_codec::fd::serialize")]
    rx: &'a OwnedFd,
    #[serde(serialize_with = "mp_codec::fd::serialize")]
    bell: &'a BorrowedFd<'a>,
}

#[derive(Deserialize)]
struct PartsIn {
    region: Region,
    #[serde(deserialize_with = "mp_codec::fd::deserialize")]
    tx: OwnedFd,
    #[serde(deserialize_with = "mp_codec::fd::deserialize")]
    rx: OwnedFd,
    #[serde(deserialize_with = "mp_codec::fd::deserialize")]
    bell: OwnedFd,
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        PartsOut {
            region: &self.inner.region,
            tx: &self.inner.tx,
            rx: &self.inner.rx,
            bell: &self.inner.ring.bell(),
        }
        .serialize(serializer)
    }
}

impl<'de, T: Message> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let parts = PartsIn::deserialize(deserializer)?;
        Queue::from_parts(parts.region, parts.tx, parts.rx, parts.bell, None)
            .map_err(mp_codec::fd::rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item whose `encode_small` claims more bytes than the buffer it was lent.
    #[derive(Debug, PartialEq)]
    struct Boastful(u8);

    impl mp_codec::Encode for Boastful {
        fn encode(&self, frame: &mut Frame) -> mp_codec::Result<()> {
            frame.bytes.push(self.0);
            Ok(())
        }

        fn encode_small(&self, buf: &mut [u8]) -> Option<usize> {
            *buf.first_mut()? = self.0;
            Some(buf.len() + 36)
        }
    }

    impl mp_codec::Decode for Boastful {
        fn decode(frame: &mut Frame) -> mp_codec::Result<Self> {
            match frame.bytes[..] {
                [b] => Ok(Boastful(b)),
                _ => Err(mp_codec::Error::Malformed("one byte".into())),
            }
        }
    }

    #[test]
    fn an_encode_small_that_claims_too_much_is_not_believed() {
        // Through every path: the unbiased one first, then the side biased to this thread.
        let q = Queue::<Boastful>::new().unwrap();
        for i in 0..200u8 {
            q.put(Boastful(i)).unwrap();
            assert_eq!(q.get().unwrap(), Boastful(i));
        }
        assert!(
            q.ring().put_lock().biased_here(),
            "the fast path was taken too"
        );
    }

    #[test]
    fn put_get_in_order() {
        let q = Queue::<u64>::new().unwrap();
        for i in 0..1000 {
            q.put(i).unwrap();
        }
        assert_eq!(q.qsize(), 1000);
        for i in 0..1000 {
            assert_eq!(q.get().unwrap(), i);
        }
        assert!(q.empty());
    }

    #[test]
    fn try_get_on_empty_and_get_timeout_time_out() {
        let q = Queue::<u8>::new().unwrap();
        assert!(matches!(q.try_get(), Err(Error::Empty)));
        let start = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(30)),
            Err(Error::Empty)
        ));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn full_hands_the_item_back() {
        let q = Queue::<String>::with_maxsize(1).unwrap();
        q.put("a".into()).unwrap();
        assert!(q.full());
        let err = q.try_put("b".into()).unwrap_err();
        assert!(matches!(err.error, Error::Full));
        assert_eq!(err.into_inner(), "b");
        let err = q
            .put_timeout("c".into(), Duration::from_millis(20))
            .unwrap_err();
        assert!(matches!(err.error, Error::Full));
        assert_eq!(q.get().unwrap(), "a");
        q.try_put("d".into()).unwrap();
    }

    fn lifeline() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    /// Waits for `cond` (another thread's step), failing after 30 s.
    fn until(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "waited 30 s for another thread");
            std::thread::yield_now();
        }
    }

    /// Runs `f` on a thread and waits at most 30 s for its result.
    fn within_30s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("hung: no answer in 30 s")
    }

    #[test]
    fn a_watched_get_takes_what_was_put_then_sees_the_hang_up() {
        let q = Queue::<u64>::new().unwrap();
        let (ours, theirs) = lifeline();
        q.put(1).unwrap();
        q.put_raw(&vec![2; 300_000], &[], None, None).unwrap();
        drop(theirs);
        let frame = q.get_raw(None, Some(ours.as_fd())).unwrap();
        assert_eq!(frame.decode::<u64>().unwrap(), 1);
        assert_eq!(
            q.get_raw(None, Some(ours.as_fd())).unwrap().bytes.len(),
            300_000
        );
        assert!(matches!(
            q.get_raw(None, Some(ours.as_fd())),
            Err(Error::Disconnected)
        ));
        // Unwatched, the same wait is only a timeout.
        assert!(matches!(
            q.get_raw(Some(Duration::from_millis(1)), None),
            Err(Error::Empty)
        ));
    }

    #[test]
    fn a_watched_get_asleep_is_woken_by_an_item_and_by_the_hang_up() {
        let q = Queue::<u64>::new().unwrap();
        let (ours, theirs) = lifeline();
        let (reader_q, waiting) = (q.clone(), Arc::new(std::sync::Barrier::new(2)));
        let gate = waiting.clone();
        let reader = std::thread::spawn(move || {
            gate.wait();
            let first = reader_q.get_raw(None, Some(ours.as_fd())).map(|f| f.bytes);
            let second = reader_q.get_raw(None, Some(ours.as_fd())).map(|f| f.bytes);
            (first, second)
        });
        waiting.wait();
        // Past its spin (20 µs), the reader sleeps; this item wakes it.
        until(|| q.ring().get_sleepers().load(Ordering::SeqCst) > 0);
        q.put_raw(b"12345678", &[], None, None).unwrap();
        until(|| q.ring().get_sleepers().load(Ordering::SeqCst) > 0);
        drop(theirs);
        let (first, second) = within_30s(move || reader.join().unwrap());
        assert_eq!(first.unwrap(), b"12345678");
        assert!(matches!(second, Err(Error::Disconnected)), "{second:?}");
    }

    #[test]
    fn a_watched_put_waiting_for_room_gives_up_when_the_peer_hangs_up() {
        let q = Queue::<u64>::builder().capacity(4096).build().unwrap();
        let (ours, theirs) = lifeline();
        while q.try_put(7).is_ok() {}
        let writer = q.clone();
        let put =
            std::thread::spawn(move || writer.put_raw(&[1; 8], &[], None, Some(ours.as_fd())));
        until(|| q.ring().put_sleepers().load(Ordering::SeqCst) > 0);
        drop(theirs);
        let result = within_30s(move || put.join().unwrap());
        assert!(matches!(result, Err(Error::Disconnected)), "{result:?}");
    }

    #[test]
    fn a_sleeper_on_the_doorbell_leaves_it_readable_while_items_remain() {
        use rustix::event::{PollFd, PollFlags, poll};
        let readable = |fd: BorrowedFd<'_>| {
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            poll(&mut fds, Some(&rustix::time::Timespec::default())).unwrap() == 1
        };
        let q = Queue::<u64>::new().unwrap();
        let _ = q.as_fd(); // polled, as `connection::wait` does
        let (ours, theirs) = lifeline();
        let reader_q = q.clone();
        let reader = std::thread::spawn(move || {
            reader_q
                .get_raw(None, Some(ours.as_fd()))
                .map(|f| f.bytes.len())
        });
        until(|| q.ring().bell_sleepers().load(Ordering::SeqCst) > 0);
        // Both items in before the reader can take one (it needs the consumers' lock).
        assert!(q.ring().get_lock().acquire().is_held());
        q.put(1).unwrap();
        q.put(2).unwrap();
        q.ring().get_lock().release();
        assert!(within_30s(move || reader.join().unwrap()).is_ok());
        assert!(
            readable(q.as_fd()),
            "an item is left, yet the doorbell is silent"
        );
        drop(theirs);
    }

    #[test]
    fn a_raw_get_refuses_an_item_over_its_limit_and_goes_on() {
        let q = Queue::<u64>::new().unwrap();
        let mut frame = Frame::new();
        for len in [10, 5000, 300_000] {
            q.put_raw(&vec![1; len], &[], None, None).unwrap();
            let err = q.get_raw_into(&mut frame, None, None, 9).unwrap_err();
            assert!(matches!(err, Error::OverLimit { max: 9, .. }), "{err:?}");
            assert!(frame.bytes.is_empty());
        }
        q.put_raw(b"12345678", &[], None, None).unwrap();
        q.get_raw_into(&mut frame, None, None, 9).unwrap();
        assert_eq!(frame.bytes, b"12345678");
    }

    #[test]
    fn a_raw_put_with_a_timeout_gives_up_on_a_full_ring() {
        let q = Queue::<u64>::builder().capacity(4096).build().unwrap();
        while q.try_put(7).is_ok() {}
        let err = q
            .put_raw(&[1; 8], &[], Some(Duration::from_millis(5)), None)
            .unwrap_err();
        assert!(matches!(err, Error::Full), "{err:?}");
    }

    #[test]
    fn items_up_to_the_in_ring_limit_go_in_the_ring() {
        let q = Queue::<Vec<u8>>::builder()
            .capacity(1 << 20)
            .in_ring_limit(300 << 10)
            .build()
            .unwrap();
        let big_items = || q.word(ring::BIG_TAIL_FOR_TESTS).load(Ordering::Relaxed);
        q.put(vec![1; 290 << 10]).unwrap();
        assert_eq!(big_items(), 0, "in the ring");
        q.put(vec![2; 310 << 10]).unwrap();
        assert_eq!(big_items(), 1, "beside it");
        assert_eq!(q.get().unwrap(), vec![1; 290 << 10]);
        assert_eq!(q.get().unwrap(), vec![2; 310 << 10]);
    }

    #[test]
    fn a_closed_handle_refuses_and_says_so() {
        let q = Queue::<u8>::new().unwrap();
        q.put(1).unwrap();
        let other = q.clone();
        q.close();
        assert!(other.is_closed());
        assert!(matches!(q.put(2).unwrap_err().error, Error::Closed));
        assert!(matches!(q.get(), Err(Error::Closed)));
        assert_eq!(Error::Closed.to_string(), "queue is closed");
    }

    /// Frames taken out of order are marked `DONE` and keep their room until `head` is moved
    /// over them. A producer short of room does not reclaim while it spins (that would take
    /// the consumers' lock from under a busy consumer), but does once it has waited, or on
    /// the last try of a `try_put`: with no consumer left to move `head`, a full ring of such
    /// frames still takes new items.
    #[test]
    fn room_left_by_frames_taken_out_of_order_comes_back_to_a_waiting_producer() {
        let q = Queue::<Vec<u8>>::builder().capacity(4096).build().unwrap();
        let ring = q.ring();
        // A large item (copied outside the locks) claimed at `head` and not yet released…
        assert!(ring.get_lock().acquire().is_held());
        assert!(ring.put_lock().acquire().is_held());
        let slot = ring
            .reserve(ring::SMALL + 8, false, Owner::me())
            .unwrap()
            .unwrap();
        ring.put_lock().release();
        ring.fill(slot, &[1; ring::SMALL + 8]);
        assert!(ring.publish(slot));
        let claim = ring
            .claim(Some(Owner::me()), &mut Vec::new())
            .unwrap()
            .unwrap();
        ring.get_lock().release();
        assert!(!claim.copied);
        // …so the small items after it, taken, are marked `DONE` behind it…
        let mut taken = 0;
        while q.try_put(vec![taken as u8; 100]).is_ok() {
            assert_eq!(
                q.get_timeout(Duration::from_secs(30)).unwrap(),
                vec![taken as u8; 100]
            );
            taken += 1;
        }
        assert!(taken > 0);
        // …and once it is released, nothing moves `head` but a producer: a `try_put`, whose
        // one try is its last, and any put that waits.
        ring.release(claim);
        q.try_put(vec![7; 100]).unwrap();
        assert_eq!(
            q.get_timeout(Duration::from_secs(30)).unwrap(),
            vec![7; 100]
        );
        for i in 0..100u8 {
            q.put_timeout(vec![i; 100], Duration::from_secs(30))
                .unwrap();
            assert_eq!(
                q.get_timeout(Duration::from_secs(30)).unwrap(),
                vec![i; 100]
            );
        }
    }

    #[test]
    fn items_larger_than_the_ring_go_through_whole() {
        let q = Queue::<Vec<u8>>::builder().capacity(4096).build().unwrap();
        for len in [0, 100, 511, 512, 5000, 1 << 20] {
            q.put(vec![len as u8; len]).unwrap();
        }
        for len in [0, 100, 511, 512, 5000, 1 << 20] {
            assert_eq!(q.get().unwrap(), vec![len as u8; len]);
        }
        assert!(q.empty());
    }

    #[test]
    fn items_that_own_descriptors_go_through_the_side_channel() {
        let q = Queue::<(String, mp_codec::Fd)>::new().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"through").unwrap();
        q.put(("pipe".into(), mp_codec::Fd::from(r))).unwrap();
        let (name, fd) = q.get().unwrap();
        let mut buf = [0u8; 7];
        rustix::io::read(fd.into_inner(), &mut buf).unwrap();
        assert_eq!((name.as_str(), &buf), ("pipe", b"through"));
    }

    #[test]
    fn a_frame_that_fails_to_decode_costs_only_itself() {
        let q = Queue::<String>::new().unwrap();
        let raw: Queue<String> = q.clone();
        // Bytes that are not a String: a length prefix larger than what follows.
        let bad = Queue::<mp_codec::Bytes> {
            inner: raw.inner.clone(),
            _type: PhantomData,
        };
        bad.put(mp_codec::Bytes(vec![200])).unwrap();
        q.put("fine".into()).unwrap();
        assert!(matches!(q.get(), Err(Error::Codec(_))));
        assert_eq!(q.get().unwrap(), "fine");
    }

    /// Items on either side of [`ring::SHORT`] (taken into a buffer on the stack, or into a
    /// frame), of every length around it, come back whole, alone and back to back.
    #[test]
    fn items_of_every_short_length_come_back_whole() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        let item = |k: usize| (0..k).map(|i| (i * 7 + k) as u8).collect::<Vec<u8>>();
        for k in 0..=ring::SHORT + 16 {
            q.put(item(k)).unwrap();
            assert_eq!(q.get().unwrap(), item(k), "alone, {k} bytes");
        }
        for k in 0..=ring::SHORT + 16 {
            q.put(item(k)).unwrap();
        }
        for k in 0..=ring::SHORT + 16 {
            assert_eq!(q.get().unwrap(), item(k), "back to back, {k} bytes");
        }
        assert!(matches!(q.try_get(), Err(Error::Empty)));
    }

    #[test]
    fn a_queue_of_another_type_is_refused() {
        let q = Queue::<u64>::new().unwrap();
        let frame = Frame::encode(&q).unwrap();
        assert!(frame.decode::<Queue<String>>().is_err());
        let frame = Frame::encode(&q).unwrap();
        let same: Queue<u64> = frame.decode().unwrap();
        q.put(5).unwrap();
        assert_eq!(same.get().unwrap(), 5);
    }

    #[test]
    fn threads_share_a_queue() {
        let q = Queue::<u64>::with_maxsize(8).unwrap();
        let producers: Vec<_> = (0..3)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        q.put(p << 32 | i).unwrap();
                    }
                })
            })
            .collect();
        let mut last = [None::<u64>; 3];
        for _ in 0..6000 {
            let v = q.get_timeout(Duration::from_secs(30)).unwrap();
            let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
            assert!(last[p].is_none_or(|l| l < i), "FIFO per producer");
            last[p] = Some(i);
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(q.empty());
    }

    #[test]
    fn a_timed_put_or_get_gives_up_on_a_lock_held_past_its_timeout() {
        // As if the holder were stopped (SIGSTOP), or dead where nobody can tell.
        let q = Queue::<u8>::new().unwrap();
        q.put(1).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        assert!(q.ring().get_lock().acquire().is_held());
        assert!(q.ring().put_lock().acquire().is_held());
        let other = q.clone();
        std::thread::spawn(move || {
            let got = other.get_timeout(Duration::from_millis(50));
            let put = other.put_timeout(2, Duration::from_millis(50));
            let tried = other.try_get();
            done.send((
                matches!(got, Err(Error::Empty)),
                put.is_err_and(|e| matches!(e.error, Error::Full)),
                matches!(tried, Err(Error::Empty)),
            ))
            .unwrap();
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        q.ring().put_lock().release();
        q.ring().get_lock().release();
        assert_eq!(outcome, Ok((true, true, true)), "timed calls overstayed");
        assert_eq!(q.get().unwrap(), 1);
    }

    #[test]
    fn a_try_get_finding_corruption_does_not_wait_for_a_lock_a_live_process_holds() {
        // Found by the fuzzer: the reset after corruption took both locks with no bound, so
        // a `try_get` waited for ever on a producers' lock held (or written over to look
        // held) by a live process.
        let q = Queue::<u64>::new().unwrap();
        q.put(1).unwrap();
        // The first frame's length, written over: more than the ring holds.
        q.ring()
            .any_word32(ring::CONTROL)
            .store(u32::MAX >> 2, Ordering::Relaxed);
        assert!(q.ring().put_lock().acquire().is_held());
        let (done, finished) = std::sync::mpsc::channel();
        let other = q.clone();
        std::thread::spawn(move || {
            let tried = other.try_get();
            done.send(matches!(tried, Err(Error::Corrupted(_))))
                .unwrap();
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        q.ring().put_lock().release();
        assert_eq!(
            outcome,
            Ok(true),
            "the try_get waited, or saw no corruption"
        );
        // The next call, with both locks free, resets the ring and the queue works again.
        let _ = q.try_get();
        q.put(2).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 2);
    }

    /// Stretches `q`'s periodic checks (see [`Queue::owner_checks`]), for every handle of
    /// it in this process: sleeps are then bounded only by their callers' deadlines, so that
    /// a wake-up missed fails a timed call.
    fn stretch_checks<T: Message>(q: &Queue<T>) {
        q.inner.checks_stretched.store(true, Ordering::Relaxed);
    }

    /// Waits (30 s at most) until `sleepers` counts someone asleep.
    fn until_asleep(sleepers: &std::sync::atomic::AtomicU32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sleepers.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "nobody went to sleep");
            std::thread::yield_now();
        }
    }

    /// Small puts publish and look for sleeping consumers under the producers' lock with no
    /// fence between; a consumer going to sleep passes through that lock. Each put, made
    /// at a random moment of the consumer's spinning or falling asleep, must reach it: with
    /// the periodic checks stretched, a missed wake-up fails its `get_timeout` (no later put
    /// comes to wake it: each waits for the last to be taken). (A put that forgot to wake
    /// fails this at once; the reordering the lock rules out is a window of nanoseconds that
    /// x86 rarely opens, so the proof of that part is the argument in `Ring::put_small`.)
    #[test]
    fn each_put_wakes_the_consumer_asleep_for_it() {
        let q = Queue::<u64>::new().unwrap();
        stretch_checks(&q);
        let theirs = q.clone();
        let (took, taken) = std::sync::mpsc::channel();
        let consumer = std::thread::spawn(move || {
            for i in 0..2000 {
                assert_eq!(theirs.get_timeout(Duration::from_secs(30)).unwrap(), i);
                took.send(i).unwrap();
            }
        });
        let mut asleep = 0;
        for i in 0..2000u64 {
            // Somewhere in the consumer's 20 µs of spinning, or just past it.
            let pause = Duration::from_nanos(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 40_000);
            let start = Instant::now();
            while start.elapsed() < pause {
                std::hint::spin_loop();
            }
            asleep += u32::from(q.ring().get_sleepers().load(Ordering::SeqCst) > 0);
            q.put(i).unwrap();
            assert_eq!(taken.recv_timeout(Duration::from_secs(30)), Ok(i));
        }
        consumer.join().unwrap();
        assert!(asleep > 0, "the consumer never slept: nothing was tested");
    }

    /// The other way round: a producer asleep for room in a full queue is woken by each get.
    #[test]
    fn each_get_wakes_the_producer_asleep_for_room() {
        let q = Queue::<u64>::builder().maxsize(1).build().unwrap();
        stretch_checks(&q);
        q.put(0).unwrap();
        let theirs = q.clone();
        let producer = std::thread::spawn(move || {
            for i in 1..300 {
                theirs.put_timeout(i, Duration::from_secs(30)).unwrap();
            }
        });
        for i in 0..300 {
            if i < 299 {
                until_asleep(q.ring().put_sleepers());
            }
            assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), i);
        }
        producer.join().unwrap();
    }

    /// A producer killed between moving `tail` and the producers' copy of it: the next put
    /// takes the lock over, copies `tail` again and puts after the dead frame.
    #[test]
    fn a_producer_killed_between_tail_and_its_copy_wedges_nobody() {
        let q = Queue::<u64>::new().unwrap();
        q.put(1).unwrap();
        die_inside_a_small_put(&q, |ring| ring.begin_small_torn_for_tests(100));
        for i in 2..100 {
            q.put_timeout(i, Duration::from_secs(30)).unwrap();
        }
        for i in 1..100 {
            assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), i);
        }
        assert!(matches!(q.try_get(), Err(Error::Empty)));
        assert_eq!(q.qsize(), 0);
    }

    /// A child takes the producers' lock, runs `step` and dies holding it.
    fn die_inside_a_small_put(q: &Queue<u64>, step: fn(&Ring)) {
        let theirs = q.clone();
        let mut child = mp_spawn::Process::fork(move || {
            let ring = theirs.ring();
            assert!(ring.put_lock().acquire().is_held());
            step(ring);
        })
        .start()
        .unwrap();
        child.join().unwrap();
        assert!(
            q.ring().put_lock().is_locked(),
            "the dead child holds the lock"
        );
    }

    /// A queue whose producers' lock a child died holding, inside a small put: its frame
    /// reserved, past `tail`, never filled.
    fn half_put_by_a_dead_producer() -> Queue<u64> {
        let q = Queue::<u64>::new().unwrap();
        die_inside_a_small_put(&q, |ring| ring.begin_small_for_tests(8));
        q
    }

    /// A put and a get go through a queue a producer died inside of (its half-put frame
    /// buried by the put, which takes the side over), and leave it empty.
    fn a_put_and_a_get_go_through(q: &Queue<u64>) {
        q.put_timeout(7, Duration::from_secs(30)).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 7);
        assert!(matches!(q.try_get(), Err(Error::Empty)));
        assert_eq!(q.qsize(), 0, "the half-put frame counts for nothing");
    }

    #[test]
    fn a_producer_killed_inside_a_small_put_leaves_nothing_and_wedges_nobody() {
        // The next put takes the lock from the dead and buries its frame.
        a_put_and_a_get_go_through(&half_put_by_a_dead_producer());
    }

    #[test]
    fn a_timed_put_repairing_after_a_death_waits_no_longer_than_its_time_for_the_other_lock() {
        // Found by the fuzzer: the repair after a death took the consumers' lock with no
        // bound, so a timed or `try_` put waited as long as a live process held it.
        let q = Queue::<u64>::with_maxsize(1).unwrap();
        die_inside_a_small_put(&q, |ring| ring.begin_small_counted_for_tests(8));
        assert_eq!(q.qsize(), 1, "the half-put frame counts, for now");
        // A live process (this thread) holds the consumers' lock for the whole put.
        assert!(q.ring().get_lock().acquire().is_held());
        let (done, finished) = std::sync::mpsc::channel();
        let other = q.clone();
        std::thread::spawn(move || {
            let put = other.put_timeout(7, Duration::from_millis(200));
            done.send(put.map_err(|e| e.error.to_string())).unwrap();
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        q.ring().get_lock().release();
        // Full by the count (the dead's frame, buried, still counted: a recount is owed).
        assert_eq!(
            outcome,
            Ok(Err(Error::Full.to_string())),
            "the put overstayed its time"
        );
        // With the lock free, a producer short of room pays the recount, and the queue works.
        q.put_timeout(8, Duration::from_secs(30)).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 8);
        assert_eq!(q.qsize(), 0);
        assert!(!q.ring().recount_owed());
    }

    #[test]
    fn a_waiting_consumer_clears_a_small_put_whose_producer_died_holding_the_lock() {
        // As above, but no producer comes after: the consumer that waits takes over.
        let q = half_put_by_a_dead_producer();
        assert_eq!(q.qsize(), 1, "the half-put frame, before anyone looks");
        assert!(matches!(
            q.get_timeout(Duration::from_millis(300)),
            Err(Error::Empty)
        ));
        assert_eq!(q.qsize(), 0, "the waiting consumer buried it");
        assert!(!q.ring().put_lock().is_locked());
    }

    #[test]
    fn qsize_and_empty_answer_while_a_live_process_holds_the_consumers_lock() {
        // Found by the fuzzer: both took the consumers' lock with no bound, so a lock held
        // for good (a stopped consumer, or a word written over to name an owner nobody can
        // judge) made them hang. They now look without it after a moment.
        let q = Queue::<u64>::new().unwrap();
        assert!(
            !q.ring().counting(),
            "the case where qsize walks the frames"
        );
        q.put(1).unwrap();
        q.put(2).unwrap();
        assert!(q.ring().get_lock().acquire().is_held());
        let (done, finished) = std::sync::mpsc::channel();
        let other = q.clone();
        std::thread::spawn(move || {
            done.send((other.qsize(), other.empty())).unwrap();
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        q.ring().get_lock().release();
        assert_eq!(outcome, Ok((2, false)), "a snapshot, in time");
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 1);
    }

    /// Whether `fd` polls readable now.
    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    #[test]
    fn arming_the_doorbell_waits_only_a_moment_for_a_lock_held_throughout() {
        // Arming took both locks with no bound, so a `connection::wait` with a timeout hung
        // while a live process (or a lock word naming one nobody can judge) held either.
        let q = Queue::<u64>::new().unwrap();
        q.put(1).unwrap();
        assert!(q.ring().get_lock().acquire().is_held());
        let (done, finished) = std::sync::mpsc::channel();
        let other = q.clone();
        std::thread::spawn(move || {
            done.send(readable(other.as_fd())).unwrap();
        });
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        q.ring().get_lock().release();
        assert_eq!(
            outcome,
            Ok(true),
            "armed in time; the item already there rings"
        );
        // The count could not be redone under both locks: owed, and told right meanwhile.
        assert_eq!(q.qsize(), 1);
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 1);
        assert!(!readable(q.as_fd()), "empty: the bell is silenced");
        assert!(
            !q.ring().recount_owed(),
            "paid by the get that found the queue empty"
        );
        assert_eq!(q.qsize(), 0);
        q.put(2).unwrap();
        assert!(readable(q.as_fd()), "a put into the empty queue rings");
        assert_eq!(q.qsize(), 1);
    }

    /// Kills this process (SIGKILL): no destructor or exit handler runs.
    fn kill_me() {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }

    /// Puts and takes items on this thread until it holds both sides biased.
    fn bias_both_sides(q: &Queue<u64>) {
        for i in 0..u64::from(crate::bias::STREAK) + 2 {
            q.put(i).unwrap();
            assert_eq!(q.get().unwrap(), i);
        }
        assert!(q.ring().put_lock().biased_here(), "the producers' side");
        assert!(q.ring().get_lock().biased_here(), "the consumers' side");
    }

    /// A bounded queue (counted: the short paths never apply) whose sides one thread holds
    /// biased puts and gets through the general paths inside them: full at `maxsize`, in
    /// order, then empty; and so does one whose doorbell is armed.
    #[test]
    fn a_biased_thread_puts_and_gets_on_a_counted_ring() {
        let bounded = Queue::<u64>::with_maxsize(8).unwrap();
        let polled = Queue::<u64>::new().unwrap();
        let _ = polled.as_fd();
        for q in [&bounded, &polled] {
            bias_both_sides(q);
            for i in 0..8 {
                q.put(i).unwrap();
            }
            if q.maxsize() != 0 {
                assert!(matches!(q.try_put(8), Err(e) if matches!(e.error, Error::Full)));
            }
            for i in 0..8 {
                assert_eq!(q.get().unwrap(), i);
            }
            assert!(matches!(q.try_get(), Err(Error::Empty)));
            assert!(
                q.ring().put_lock().biased_here(),
                "still the producers' side"
            );
            assert!(
                q.ring().get_lock().biased_here(),
                "still the consumers' side"
            );
        }
    }

    #[test]
    fn a_side_used_by_one_thread_alone_ends_up_biased_to_it_and_another_thread_takes_it_back() {
        let q = Queue::<u64>::new().unwrap();
        bias_both_sides(&q);
        let theirs = q.clone();
        within_30s(move || {
            for i in 0..100 {
                theirs.put(i).unwrap();
            }
            for i in 0..100 {
                assert_eq!(theirs.get().unwrap(), i);
            }
            assert!(
                !theirs.ring().put_lock().biased_here(),
                "only the first thread biases"
            );
        });
        assert!(!q.ring().put_lock().is_locked(), "given back, released");
        // The first thread finds its bias gone, takes the lock the plain way, and biases
        // again after a streak.
        q.put(7).unwrap();
        assert_eq!(q.get().unwrap(), 7);
        bias_both_sides(&q);
    }

    #[test]
    fn a_thread_never_biases_a_side_another_thread_keeps_taking() {
        let q = Queue::<u64>::new().unwrap();
        let theirs = q.clone();
        for round in 0..u64::from(crate::bias::STREAK) * 2 {
            q.put(round).unwrap();
            let theirs = theirs.clone();
            within_30s(move || assert_eq!(theirs.get().unwrap(), round));
        }
        assert!(!q.ring().get_lock().biased_here());
        assert!(!q.ring().get_lock().is_locked());
    }

    #[test]
    fn a_process_holding_both_sides_biased_and_idle_gives_them_up_to_another() {
        let q = Queue::<u64>::new().unwrap();
        let (ready_rx, ready_tx) = rustix::pipe::pipe().unwrap();
        let (hold_rx, hold_tx) = rustix::pipe::pipe().unwrap();
        let theirs = q.clone();
        let mut child = mp_spawn::Process::fork(move || {
            bias_both_sides(&theirs);
            rustix::io::write(&ready_tx, b"r").unwrap();
            // Idle, biased, until the parent is done.
            let mut byte = [0u8];
            let _ = rustix::io::read(&hold_rx, &mut byte);
            // The parent took both sides back: this process finds that and carries on.
            theirs.put(99).unwrap();
        })
        .start()
        .unwrap();
        let mut byte = [0u8];
        assert_eq!(rustix::io::read(&ready_rx, &mut byte).unwrap(), 1);
        within_30s(move || {
            for i in 0..50 {
                q.put_timeout(i, Duration::from_secs(30)).unwrap();
            }
            for i in 0..50 {
                assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), i);
            }
            rustix::io::write(&hold_tx, b"g").unwrap();
            assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 99);
        });
        child.join().unwrap();
        assert_eq!(child.exitcode(), Some(0));
    }

    #[test]
    fn a_process_that_dies_holding_a_side_biased_outside_an_operation_wedges_nobody() {
        let q = Queue::<u64>::new().unwrap();
        let theirs = q.clone();
        let mut child = mp_spawn::Process::fork(move || {
            bias_both_sides(&theirs);
            theirs.put(5).unwrap();
            // Killed: the bias dies with the process.
            kill_me();
        })
        .start()
        .unwrap();
        // (Joined as a child that was killed.)
        let _ = child.join();
        assert_eq!(child.exitcode(), Some(-9));
        assert!(
            q.ring().put_lock().is_locked(),
            "the dead holds the producers' side"
        );
        within_30s(move || {
            assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 5);
            q.put_timeout(6, Duration::from_secs(30)).unwrap();
            assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 6);
            assert!(matches!(q.try_get(), Err(Error::Empty)));
        });
    }

    /// A queue whose producers' side a child held biased and was killed inside: its frame
    /// reserved past `tail`, never filled, its slot still saying "inside".
    fn killed_inside_a_biased_small_put() -> Queue<u64> {
        let q = Queue::<u64>::new().unwrap();
        let theirs = q.clone();
        let mut child = mp_spawn::Process::fork(move || {
            bias_both_sides(&theirs);
            let ring = theirs.ring();
            // Entered as the holder: "inside" stays set when it dies.
            assert!(ring.put_lock().try_acquire().is_held());
            ring.begin_small_for_tests(8);
            kill_me();
        })
        .start()
        .unwrap();
        // (Joined as a child that was killed.)
        let _ = child.join();
        assert_eq!(child.exitcode(), Some(-9));
        q
    }

    #[test]
    fn a_process_that_dies_inside_a_biased_small_put_leaves_nothing_and_wedges_nobody() {
        let q = killed_inside_a_biased_small_put();
        within_30s(move || a_put_and_a_get_go_through(&q));
    }

    #[test]
    fn a_fork_child_never_uses_its_parents_bias() {
        let q = Queue::<u64>::new().unwrap();
        bias_both_sides(&q);
        let theirs = q.clone();
        let mut child = mp_spawn::Process::fork(move || {
            assert!(
                !theirs.ring().put_lock().biased_here(),
                "the parent's, not ours"
            );
            for i in 0..100 {
                theirs.put(i).unwrap();
            }
            for i in 0..100 {
                assert_eq!(theirs.get().unwrap(), i);
            }
        })
        .start()
        .unwrap();
        child.join().unwrap();
        assert_eq!(child.exitcode(), Some(0));
        q.put(1).unwrap();
        assert_eq!(q.get().unwrap(), 1);
        assert!(matches!(q.try_get(), Err(Error::Empty)));
    }

    #[test]
    fn a_taker_killed_while_it_waits_for_a_holder_inside_its_operation_wedges_nobody() {
        let q = Queue::<u64>::new().unwrap();
        bias_both_sides(&q);
        // Inside the producers' side, as the biased holder, until told otherwise.
        assert!(q.ring().put_lock().try_acquire().is_held());
        let theirs = q.clone();
        let mut child = mp_spawn::Process::fork(move || {
            // Takes the lock, asks for the side, and waits for us to leave: killed there.
            let _ = theirs.put_timeout(1, Duration::from_secs(60));
        })
        .start()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !q.ring().put_lock().taking_back() {
            assert!(
                Instant::now() < deadline,
                "the child never asked for the side"
            );
            std::thread::yield_now();
        }
        child.kill().unwrap();
        let _ = child.join();
        q.ring().put_lock().release(); // leaves
        // Another thread (not the one the side was biased to) puts: it takes the lock over
        // from the dead taker and finishes the take-back.
        let theirs = q.clone();
        within_30s(move || theirs.put_timeout(2, Duration::from_secs(30)).unwrap());
        q.put(3).unwrap();
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 2);
        assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 3);
        assert!(matches!(q.try_get(), Err(Error::Empty)));
    }

    #[test]
    fn a_put_inside_the_producers_side_this_thread_holds_biased_never_enters_it_twice() {
        let q = Queue::<u64>::new().unwrap();
        bias_both_sides(&q);
        let nested = q.__with_put_lock(|| q.try_put(1).is_ok()).unwrap();
        assert!(
            !nested,
            "a try inside the side it holds finds it busy, as on a plain lock"
        );
        q.put(2).unwrap();
        assert_eq!(q.get().unwrap(), 2);
        assert!(matches!(q.try_get(), Err(Error::Empty)));
    }

    #[test]
    fn a_try_put_finds_a_biased_producer_killed_inside_its_put_and_repairs() {
        let q = killed_inside_a_biased_small_put();
        // A `try_` call, which waits for nobody, still finds the holder gone.
        q.try_put(7).unwrap();
        assert_eq!(q.try_get().unwrap(), 7);
        assert!(matches!(q.try_get(), Err(Error::Empty)));
    }

    #[test]
    fn a_consumer_that_keeps_going_to_sleep_never_biases_the_producers_side_to_itself() {
        let q = Queue::<u64>::new().unwrap();
        for _ in 0..u64::from(crate::bias::STREAK) + 4 {
            // Empty: spins, then sleeps, passing through the producers' lock each time.
            assert!(matches!(
                q.get_timeout(Duration::from_millis(1)),
                Err(Error::Empty)
            ));
        }
        assert!(!q.ring().put_lock().biased_here(), "passes are not uses");
        assert!(!q.ring().put_lock().is_locked());
    }
}
