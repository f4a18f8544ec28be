use std::os::fd::OwnedFd;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{Error, Result};

/// One message as it crosses a boundary: payload bytes plus the file descriptors it carries.
///
/// The payload travels as the bytes of a CPython `Connection` message; the descriptors travel
/// beside it (`SCM_RIGHTS` on a unix socket, inheritance under `fork`). A frame is reusable:
/// [`Frame::clear`] keeps the allocation.
///
/// ```
/// use multiprocessing::codec::Frame;
///
/// let frame = Frame::encode(&("answer", 42u8))?;
/// assert_eq!(frame.bytes, b"\x06answer\x2a");
/// assert!(frame.fds.is_empty());
/// let (word, n): (String, u8) = frame.decode()?;
/// assert_eq!((word.as_str(), n), ("answer", 42));
/// # Ok::<(), multiprocessing::codec::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Frame {
    /// The encoded value.
    pub bytes: Vec<u8>,
    /// The descriptors the value owns, in the order its encoding refers to them.
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// An empty frame.
    pub const fn new() -> Self {
        Frame {
            bytes: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// A frame holding `value`'s encoding.
    ///
    /// # Errors
    /// [`Error::Encode`] if a `Serialize` impl fails, or an [`Error::Os`] if a descriptor the
    /// value owns cannot be duplicated.
    pub fn encode<T: Encode + ?Sized>(value: &T) -> Result<Self> {
        let mut frame = Frame::new();
        value.encode(&mut frame)?;
        Ok(frame)
    }

    /// Decodes the whole frame as a `T`, taking the descriptors it refers to.
    ///
    /// # Errors
    /// Any decoding error of [`Decode::decode`].
    pub fn decode<T: Decode>(mut self) -> Result<T> {
        T::decode(&mut self)
    }

    /// Empties the frame, closing any descriptors, and keeps the byte buffer's allocation.
    #[inline]
    pub fn clear(&mut self) {
        self.bytes.clear();
        if !self.fds.is_empty() {
            self.fds.clear();
        }
    }
}

/// A value that can be written into a [`Frame`]: the sending half of [`Message`].
///
/// Implemented for every `serde::Serialize` type, sized or not (feature `serde`, on by
/// default; encoded with postcard), for [`Pod`] values and for [`Bytes`]. Sending takes an
/// `Encode`, so borrowed data such as `&str` or `&[T]` can be sent without copying it first.
///
/// ```
/// use multiprocessing::codec::{Encode, Frame};
///
/// let mut frame = Frame::new();
/// "borrowed".encode(&mut frame)?;
/// assert_eq!(frame.decode::<String>()?, "borrowed");
/// # Ok::<(), multiprocessing::codec::Error>(())
/// ```
pub trait Encode {
    /// Appends the encoding of `self` to `frame` (its bytes and its descriptors).
    ///
    /// # Errors
    /// [`Error::Encode`] if the value cannot be represented, [`Error::Os`] if a descriptor
    /// cannot be duplicated. On error the frame may hold a partial encoding: clear it.
    fn encode(&self, frame: &mut Frame) -> Result<()>;

    /// Writes the encoding of `self` into `buf` if it fits there and refers to no
    /// descriptor: how many bytes it took, the same bytes [`Encode::encode`] appends to a
    /// frame. `None` otherwise (whatever `buf` then holds means nothing), and for any value
    /// this cannot say for: encode into a frame instead. For a caller with a small buffer of
    /// its own to try first (a queue's fast path, which then needs no frame). The default
    /// always says `None`; serde types and [`Pod`] values try.
    ///
    /// ```
    /// use multiprocessing::codec::{Encode, Frame};
    ///
    /// let mut buf = [0u8; 16];
    /// let len = 300u64.encode_small(&mut buf).expect("fits");
    /// assert_eq!(&buf[..len], Frame::encode(&300u64)?.bytes.as_slice());
    /// assert_eq!("a longer string than that".encode_small(&mut buf), None);
    /// # Ok::<(), multiprocessing::codec::Error>(())
    /// ```
    #[inline]
    fn encode_small(&self, buf: &mut [u8]) -> Option<usize> {
        let _ = buf;
        None
    }
}

/// A value that can be read back out of a [`Frame`]: the receiving half of [`Message`].
///
/// Implemented for every `serde::de::DeserializeOwned` type, for [`Pod`] values and for
/// [`Bytes`].
pub trait Decode: Sized {
    /// Decodes a value from all of `frame`'s bytes, taking the descriptors it refers to and
    /// closing the rest (this crate's impls do; an impl of your own should too).
    ///
    /// Total: any bytes give a value or an error, never a panic, and no allocation is sized by
    /// an unchecked length. The frame is left in an unspecified state (reuse it after
    /// [`Frame::clear`]).
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::TrailingBytes`], [`Error::WrongSize`] or
    /// [`Error::MissingFd`] when the frame is not an encoding of `Self`, [`Error::TooDeep`]
    /// when it nests past [`MAX_DEPTH`](crate::MAX_DEPTH).
    fn decode(frame: &mut Frame) -> Result<Self>;

    /// Decodes a value from all of `bytes`: an encoding that owns no descriptors (one that
    /// refers to some is an error). For a caller holding many small encodings back to back:
    /// serde types decode in place; the default copies the bytes into a frame first.
    ///
    /// ```
    /// use multiprocessing::codec::{Decode, Frame};
    ///
    /// let frame = Frame::encode(&(7u8, "seven"))?;
    /// assert_eq!(<(u8, String)>::decode_bytes(&frame.bytes)?, (7, "seven".to_string()));
    /// # Ok::<(), multiprocessing::codec::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Decode::decode`].
    fn decode_bytes(bytes: &[u8]) -> Result<Self> {
        let mut frame = Frame::new();
        frame.bytes.extend_from_slice(bytes);
        Self::decode(&mut frame)
    }
}

/// A value that can be sent to another process and received there: [`Encode`] + [`Decode`].
///
/// Every `serde` type is one (feature `serde`, on by default; encoded with postcard), and so
/// are [`Pod`] values (their bytes as they are in memory) and [`Bytes`].
///
/// ```
/// use multiprocessing::codec::{Decode, Encode, Frame, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// enum Job {
///     Square(u64),
///     Stop,
/// }
///
/// fn round_trip<T: Message>(value: &T) -> multiprocessing::codec::Result<T> {
///     let mut frame = Frame::new();
///     value.encode(&mut frame)?;
///     T::decode(&mut frame)
/// }
/// assert_eq!(round_trip(&Job::Square(12))?, Job::Square(12));
/// # Ok::<(), multiprocessing::codec::Error>(())
/// ```
pub trait Message: Encode + Decode {}

impl<T: Encode + Decode> Message for T {}

#[cfg(feature = "serde")]
impl<T: serde::Serialize + ?Sized> Encode for T {
    #[inline]
    fn encode(&self, frame: &mut Frame) -> Result<()> {
        crate::fd::encode_serde(self, frame)
    }

    #[inline]
    fn encode_small(&self, buf: &mut [u8]) -> Option<usize> {
        crate::fd::encode_serde_small(self, buf)
    }
}

#[cfg(feature = "serde")]
impl<T: serde::de::DeserializeOwned> Decode for T {
    #[inline]
    fn decode(frame: &mut Frame) -> Result<Self> {
        crate::fd::decode_serde(frame)
    }

    #[inline]
    fn decode_bytes(bytes: &[u8]) -> Result<Self> {
        crate::fd::decode_serde_bytes(bytes)
    }
}

/// A plain-old-data value that crosses as its in-memory bytes, with no encoding at all.
///
/// `T` is any zerocopy type with no padding and no invalid bit patterns; decoding checks only
/// the size. Both ends must agree on `T`'s layout (same target, same definition).
///
/// ```
/// use multiprocessing::codec::{Frame, Pod};
///
/// let frame = Frame::encode(&Pod([1.5f64, -2.0, 8.25]))?;
/// assert_eq!(frame.bytes.len(), 24);
/// let Pod(xs): Pod<[f64; 3]> = frame.decode()?;
/// assert_eq!(xs, [1.5, -2.0, 8.25]);
/// # Ok::<(), multiprocessing::codec::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pod<T>(pub T);

impl<T: IntoBytes + Immutable> Encode for Pod<T> {
    #[inline]
    fn encode(&self, frame: &mut Frame) -> Result<()> {
        frame.bytes.extend_from_slice(self.0.as_bytes());
        Ok(())
    }

    #[inline]
    fn encode_small(&self, buf: &mut [u8]) -> Option<usize> {
        let bytes = self.0.as_bytes();
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(bytes.len())
    }
}

impl<T: FromBytes + KnownLayout> Decode for Pod<T> {
    #[inline]
    fn decode(frame: &mut Frame) -> Result<Self> {
        close_unclaimed(frame);
        T::read_from_bytes(&frame.bytes)
            .map(Pod)
            .map_err(|_| Error::WrongSize {
                expected: size_of::<T>(),
                found: frame.bytes.len(),
            })
    }
}

/// A [`Pod`] or [`Bytes`] claims no descriptors: any that came with its frame were sent by a
/// peer nobody asked, and are closed now rather than left in the frame.
#[inline]
fn close_unclaimed(frame: &mut Frame) {
    if !frame.fds.is_empty() {
        frame.fds.clear();
    }
}

/// Raw bytes, sent as they are: Python's `send_bytes` / `recv_bytes`.
///
/// ```
/// use multiprocessing::codec::{Bytes, Frame};
///
/// let frame = Frame::encode(&Bytes(b"\x00\xffraw".to_vec()))?;
/// assert_eq!(frame.bytes, b"\x00\xffraw");
/// let Bytes(back) = frame.decode()?;
/// assert_eq!(back, b"\x00\xffraw");
/// # Ok::<(), multiprocessing::codec::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Encode for Bytes {
    #[inline]
    fn encode(&self, frame: &mut Frame) -> Result<()> {
        frame.bytes.extend_from_slice(&self.0);
        Ok(())
    }
}

impl Decode for Bytes {
    #[inline]
    fn decode(frame: &mut Frame) -> Result<Self> {
        close_unclaimed(frame);
        Ok(Bytes(std::mem::take(&mut frame.bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_DEPTH;

    #[test]
    fn pod_of_the_wrong_size_is_an_error() {
        let mut frame = Frame::encode(&Pod(7u32)).unwrap();
        assert_eq!(frame.bytes, 7u32.to_ne_bytes());
        let err = Pod::<u64>::decode(&mut frame).unwrap_err();
        assert!(matches!(
            err,
            Error::WrongSize {
                expected: 8,
                found: 4
            }
        ));
    }

    #[test]
    fn pod_and_bytes_close_descriptors_nobody_asked_for() {
        let stray = || {
            let (_r, w) = std::io::pipe().unwrap();
            vec![OwnedFd::from(w)]
        };
        let mut frame = Frame::encode(&Pod(7u32)).unwrap();
        frame.fds = stray();
        assert_eq!(Pod::<u32>::decode(&mut frame).unwrap(), Pod(7));
        assert!(frame.fds.is_empty(), "a Pod receive kept {:?}", frame.fds);

        let mut frame = Frame::encode(&Pod(7u32)).unwrap();
        frame.fds = stray();
        assert!(Pod::<u64>::decode(&mut frame).is_err());
        assert!(
            frame.fds.is_empty(),
            "a failed Pod receive kept {:?}",
            frame.fds
        );

        let mut frame = Frame::encode(&Bytes(b"raw".to_vec())).unwrap();
        frame.fds = stray();
        assert_eq!(Bytes::decode(&mut frame).unwrap().0, b"raw");
        assert!(frame.fds.is_empty(), "a Bytes receive kept {:?}", frame.fds);
    }

    #[test]
    fn bytes_cross_verbatim_including_empty() {
        for payload in [&b""[..], b"\x00", b"\xff\xfe raw"] {
            let frame = Frame::encode(&Bytes(payload.to_vec())).unwrap();
            assert_eq!(frame.bytes, payload);
            assert_eq!(frame.decode::<Bytes>().unwrap().0, payload);
        }
    }

    #[test]
    fn decode_bytes_is_decode_for_values_without_descriptors() {
        for value in [0u64, 127, 128, 1 << 35, u64::MAX] {
            let frame = Frame::encode(&(value, "x", [value; 3])).unwrap();
            type T = (u64, String, [u64; 3]);
            assert_eq!(
                T::decode_bytes(&frame.bytes).unwrap(),
                frame.decode::<T>().unwrap()
            );
        }
        assert!(matches!(
            u8::decode_bytes(&[1, 2]),
            Err(Error::TrailingBytes { left: 1, .. })
        ));
        // An encoding that refers to a descriptor, given without it.
        let pipe = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let frame = Frame::encode(&crate::Fd::from(pipe)).unwrap();
        assert!(crate::Fd::decode_bytes(&frame.bytes).is_err());
    }

    #[test]
    fn encode_appends_and_clear_keeps_capacity() {
        let mut frame = Frame::new();
        1u8.encode(&mut frame).unwrap();
        2u8.encode(&mut frame).unwrap();
        assert_eq!(frame.bytes, [1, 2]);
        let cap = frame.bytes.capacity();
        frame.clear();
        assert!(frame.bytes.is_empty());
        assert_eq!(frame.bytes.capacity(), cap);
    }

    #[test]
    fn leftover_bytes_mean_the_wrong_type() {
        let frame = Frame::encode(&(1u8, 2u8)).unwrap();
        assert!(matches!(
            frame.decode::<u8>().unwrap_err(),
            Error::TrailingBytes { left: 1, .. }
        ));
    }

    #[test]
    fn leftover_bytes_name_the_expected_type_and_count_in_words() {
        let one = Frame::encode(&(1u8, 2u8))
            .unwrap()
            .decode::<u8>()
            .unwrap_err();
        assert_eq!(
            one.to_string(),
            "message is not a u8: 1 byte left over after decoding one"
        );
        let five = Frame::encode(&(1u8, [2u8; 5]))
            .unwrap()
            .decode::<u8>()
            .unwrap_err();
        assert!(five.to_string().contains(": 5 bytes left over"), "{five}");
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        let frame = Frame {
            bytes: vec![0xff; 3],
            fds: Vec::new(),
        };
        assert!(matches!(
            frame.decode::<String>().unwrap_err(),
            Error::Malformed(_)
        ));
    }

    /// A value that nests without bound: each level is one more enum variant.
    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    enum Tree {
        Leaf(u8),
        Node(Box<Tree>),
    }

    /// The encoding of `Tree::Node` nested `nodes` times around a leaf: `nodes + 1` levels.
    fn nested_tree(nodes: usize) -> Frame {
        let mut bytes = vec![1u8; nodes]; // variant 1, `Node`, at every level
        bytes.extend([0, 7]); // variant 0, `Leaf(7)`
        Frame {
            bytes,
            fds: Vec::new(),
        }
    }

    #[test]
    fn a_deeply_nested_frame_is_an_error_not_a_stack_overflow() {
        // 400 KB of `Node` tags: without a depth limit this recursed 400 000 times and aborted.
        let err = nested_tree(400_000).decode::<Tree>().unwrap_err();
        assert!(matches!(err, Error::TooDeep(MAX_DEPTH)), "{err:?}");
        assert_eq!(err.to_string(), "message nests deeper than 128 levels");
    }

    #[test]
    fn nesting_up_to_the_limit_decodes_and_past_it_fails_on_a_small_stack() {
        // 256 KiB: room for the limit at the crate docs' 2 KiB a level, and far too small
        // for the 400 000 levels an unlimited decoder would go down.
        let (deepest, too_deep, way_too_deep) = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let levels = |n| nested_tree(n - 1).decode::<Tree>().map(drop);
                (levels(MAX_DEPTH), levels(MAX_DEPTH + 1), levels(400_000))
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(deepest.is_ok(), "{deepest:?}");
        assert!(matches!(too_deep, Err(Error::TooDeep(_))), "{too_deep:?}");
        assert!(
            matches!(way_too_deep, Err(Error::TooDeep(_))),
            "{way_too_deep:?}"
        );
    }

    /// `Tree` with a `Mark` at each level, which notes where on the stack it runs.
    #[derive(serde::Deserialize)]
    enum Marked {
        #[expect(dead_code, reason = "only the shape matters")]
        Leaf(u8),
        #[expect(dead_code, reason = "only the shape matters")]
        Node(Box<Mark>),
    }

    struct Mark;

    std::thread_local! {
        static MARKS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    impl<'de> serde::Deserialize<'de> for Mark {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let here = 0u8;
            let address = std::ptr::from_ref(std::hint::black_box(&here)) as usize;
            MARKS.with(|marks| marks.borrow_mut().push(address));
            Marked::deserialize(d).map(|_| Mark)
        }
    }

    #[test]
    fn a_level_of_nesting_takes_under_2_kib_of_stack() {
        // The bound the crate docs promise for a plain recursive enum (measured: 896 bytes a
        // level in a debug build, 144 in release).
        assert!(matches!(
            nested_tree(400_000).decode::<Mark>(),
            Err(Error::TooDeep(_))
        ));
        // One mark per level, and one more for the level that was refused.
        let marks = MARKS.take();
        assert_eq!(marks.len(), MAX_DEPTH + 1);
        let per_level = marks[0].abs_diff(marks[MAX_DEPTH]) / MAX_DEPTH;
        assert!(per_level < 2048, "{per_level} bytes of stack a level");
    }

    #[test]
    fn a_lying_length_prefix_allocates_nothing_big() {
        // A `Vec<u64>` claiming u32::MAX elements in a 5-byte frame: serde caps the
        // pre-allocation and the decoder runs out of bytes.
        let frame = Frame {
            bytes: vec![0xff, 0xff, 0xff, 0xff, 0x0f],
            fds: Vec::new(),
        };
        assert!(matches!(
            frame.decode::<Vec<u64>>().unwrap_err(),
            Error::Malformed(_)
        ));
    }
}
