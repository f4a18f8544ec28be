//! `Queue<T>`: the handle over a [`Ring`] in a shared region, with blocking, timeouts and
//! the codec.

use std::{
    fmt,
    marker::PhantomData,
    os::fd::{AsFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use mp_codec::{Frame, Message};
use mp_sync::{Acquire, RawLock, Region, Spec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    Error, PutError, Result,
    owner::Owner,
    ring::{self, CONTROL, Corrupt, Ring},
    sys::{self, Bytes},
};

/// The ring's size when none is given: room for 16 items of 64 KiB in flight, or tens of
/// thousands of small ones, before a producer waits. Pages are only touched as the ring
/// fills (a memfd is allocated lazily), so an idle or lightly used queue costs a few pages.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// How long a waiter spins (watching the word it would sleep on) before sleeping: waking an
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
/// let q = mp_queue::Queue::<u64>::builder().maxsize(10).capacity(64 << 10).build()?;
/// assert_eq!(q.maxsize(), 10);
/// # Ok::<(), mp_queue::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Builder<T> {
    maxsize: usize,
    capacity: usize,
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
        Queue::from_region(region, Some(self.maxsize as u64))
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
    closed: AtomicBool,
}

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
///   nothing else. Neither wedges the others: the room their frames held comes back once a
///   producer needing it has checked (after 10 ms of waiting) that the process is dead.
///
/// ```
/// let q = mp_queue::Queue::<String>::new()?;
/// q.put("hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// assert!(matches!(q.try_get(), Err(mp_queue::Error::Empty)));
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
            _type: PhantomData,
        }
    }

    /// `maxsize`: `Some` when made here (writes it), `None` when attached.
    fn from_region(region: Region, maxsize: Option<u64>) -> Result<Self> {
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
        let ring = Ring::new(bytes, cap, maxsize.unwrap_or(0), maxsize.is_some());
        Ok(Queue {
            inner: Arc::new(Inner {
                ring,
                region,
                closed: AtomicBool::new(false),
            }),
            _type: PhantomData,
        })
    }

    fn ring(&self) -> &Ring {
        &self.inner.ring
    }

    /// Puts `item`, waiting for room as long as it takes.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::TooLarge`], [`Error::CarriesDescriptors`],
    /// [`Error::Codec`] (the item cannot be encoded), [`Error::Corrupted`]; the item comes
    /// back in the error.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, None)
    }

    /// Puts `item` if there is room now.
    ///
    /// # Errors
    /// [`Error::Full`], or any error of [`Queue::put`]; the item comes back in the error.
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, Some(Instant::now()))
    }

    /// Puts `item`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Full`] after the timeout, or any error of [`Queue::put`]; the item comes back
    /// in the error.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Instant::now().checked_add(timeout))
    }

    /// Takes the oldest item, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Codec`] when the bytes taken do not decode as a `T` (that
    /// item is lost; the next `get` goes on); [`Error::Corrupted`].
    pub fn get(&self) -> Result<T> {
        self.get_until(None)
    }

    /// Takes an item if one is there now.
    ///
    /// # Errors
    /// [`Error::Empty`], or any error of [`Queue::get`].
    pub fn try_get(&self) -> Result<T> {
        self.get_until(Some(Instant::now()))
    }

    /// Takes an item, waiting at most `timeout` for one.
    ///
    /// # Errors
    /// [`Error::Empty`] after the timeout, or any error of [`Queue::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Instant::now().checked_add(timeout))
    }

    /// How many items are in the queue: put (or being put) and not yet taken. A snapshot,
    /// as in Python: other processes may change it before the caller looks. It counts a
    /// `put` from the moment it has room, so it may count an item still being copied in.
    pub fn qsize(&self) -> usize {
        self.ring().items() as usize
    }

    /// Whether no item could be taken right now (a snapshot; exact at the moment it looks).
    pub fn empty(&self) -> bool {
        let ring = self.ring();
        with_lock(self, ring.get_lock(), || ring.any_ready())
            .map(|ready| !ready)
            .unwrap_or(false)
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

    fn put_until(&self, item: T, deadline: Option<Instant>) -> Result<(), PutError<T>> {
        match self.put_frame(&item, deadline, || ()) {
            Ok(()) => Ok(()),
            Err(error) => Err(PutError { error, item }),
        }
    }

    /// Encodes and puts `item`; `before_publish` runs once room is reserved, just before the
    /// item becomes visible (a `JoinableQueue` counts the task there).
    pub(crate) fn put_frame(
        &self,
        item: &T,
        deadline: Option<Instant>,
        before_publish: impl FnOnce(),
    ) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let frame = Frame::encode(item)?;
        if !frame.fds.is_empty() {
            return Err(Error::CarriesDescriptors(frame.fds.len()));
        }
        let ring = self.ring();
        let len = frame.bytes.len();
        if len > ring.max_payload() {
            return Err(Error::TooLarge {
                len,
                capacity: ring.capacity(),
            });
        }
        let me = Owner::me();
        let slot = wait(ring.freed(), ring.put_sleepers(), deadline, |waited_long| {
            loop {
                match with_lock(self, ring.put_lock(), || ring.reserve(len, me))? {
                    Some(slot) => return Ok(Some(slot)),
                    None => {
                        // Make room: reclaim (and, after a while, bury the dead), then try
                        // once more if that freed anything.
                        let freed = with_lock(self, ring.get_lock(), || {
                            if waited_long {
                                ring.bury_dead()
                            } else {
                                ring.reclaim()
                            }
                        })?;
                        if !freed {
                            return Ok(None);
                        }
                    }
                }
            }
        })?
        .ok_or(Error::Full)?;
        ring.fill(slot, &frame.bytes);
        before_publish();
        if ring.publish(slot) {
            Ok(())
        } else {
            Err(Error::Lost)
        }
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let ring = self.ring();
        let me = Owner::me();
        let claim = wait(
            ring.published(),
            ring.get_sleepers(),
            deadline,
            |waited_long| {
                with_lock(self, ring.get_lock(), || {
                    if waited_long {
                        // Frames of the dead still count in `qsize` until buried.
                        ring.bury_dead()?;
                    }
                    ring.claim(me)
                })
            },
        )?
        .ok_or(Error::Empty)?;
        let mut frame = Frame::new();
        ring.read(claim, &mut frame.bytes);
        ring.release(claim);
        Ok(frame.decode()?)
    }

    /// Repairs the ring after a process died holding one of its locks: both locks held,
    /// the item count redone.
    fn repair(&self) {
        let ring = self.ring();
        let get = ring.get_lock().acquire();
        let put = ring.put_lock().acquire();
        if ring.recount().is_err() {
            ring.reset();
        }
        if put.is_held() {
            let _ = ring.put_lock().release();
        }
        if get.is_held() {
            let _ = ring.get_lock().release();
        }
    }

    /// Drops every frame after corruption (see [`Ring::reset`]).
    fn reset(&self) {
        let ring = self.ring();
        let get = ring.get_lock().acquire();
        let put = ring.put_lock().acquire();
        ring.reset();
        if put.is_held() {
            let _ = ring.put_lock().release();
        }
        if get.is_held() {
            let _ = ring.get_lock().release();
        }
    }

    pub(crate) fn word32(&self, offset: usize) -> &AtomicU32 {
        self.ring().word32(offset)
    }

    pub(crate) fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        self.ring().word(offset)
    }
}

/// Runs `f` holding `lock`; repairs the ring afterwards if the lock's last owner died
/// holding it, and after corruption resets it and reports [`Error::Corrupted`].
fn with_lock<T: Message, R>(
    queue: &Queue<T>,
    lock: &RawLock,
    f: impl FnOnce() -> std::result::Result<R, Corrupt>,
) -> Result<R> {
    let took = lock.acquire();
    let result = f();
    let _ = lock.release();
    if took == Acquire::OwnerDied {
        queue.repair();
    }
    result.map_err(|Corrupt(why)| {
        queue.reset();
        Error::Corrupted(why)
    })
}

/// Tries `attempt` until it gives a value or `deadline` passes (`None`: never). Between
/// tries it spins for [`SPIN`] watching `word` (bumped by whoever may have made the attempt
/// succeed), then sleeps on it, counted in `sleepers` so wakers know to wake. `attempt`
/// gets `true` when the caller has waited long enough to ask the kernel about dead owners.
fn wait<R>(
    word: &AtomicU32,
    sleepers: &AtomicU32,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(bool) -> Result<Option<R>>,
) -> Result<Option<R>> {
    let start = Instant::now();
    let mut next_check = start + FIRST_OWNER_CHECK;
    loop {
        let seen = word.load(Ordering::SeqCst);
        if let Some(value) = attempt(false)? {
            return Ok(Some(value));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(None);
        }
        // Spin: a busy peer usually answers within microseconds.
        let spin_end = deadline.map_or(now + SPIN, |d| d.min(now + SPIN));
        let mut spins = 0u32;
        let changed = loop {
            if word.load(Ordering::Relaxed) != seen {
                break true;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(64) && Instant::now() >= spin_end {
                break false;
            }
        };
        if changed {
            continue;
        }
        // Sleep: count ourselves first, then look once more, so a waker either sees us or
        // we see its change.
        sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = word.load(Ordering::SeqCst);
        let now = Instant::now();
        let long = now >= next_check;
        if long {
            next_check = now + OWNER_CHECK;
        }
        let result = attempt(long);
        if !matches!(result, Ok(None)) {
            sleepers.fetch_sub(1, Ordering::SeqCst);
            return result;
        }
        let now = Instant::now();
        let mut timeout = next_check.saturating_duration_since(now);
        if let Some(d) = deadline {
            if now >= d {
                sleepers.fetch_sub(1, Ordering::SeqCst);
                return Ok(None);
            }
            timeout = timeout.min(d - now);
        }
        sys::futex_wait(word, seen, Some(timeout));
        sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T> AsFd for Queue<T> {
    /// The descriptor of the queue's shared memory (for passing it on by hand; it is not
    /// a descriptor to poll).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.region.as_fd()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.inner.region.serialize(serializer)
    }
}

impl<'de, T: Message> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let region = Region::deserialize(deserializer)?;
        Queue::from_region(region, None).map_err(mp_codec::fd::rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn too_large_an_item_is_refused_and_handed_back() {
        let q = Queue::<Vec<u8>>::builder().capacity(4096).build().unwrap();
        let err = q.put(vec![7; 5000]).unwrap_err();
        assert!(matches!(err.error, Error::TooLarge { .. }), "{}", err.error);
        assert_eq!(err.item.len(), 5000);
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
}
