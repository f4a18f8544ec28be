//! [`Fd`]: a file descriptor inside a message, and the side channel that carries it;
//! [`serialize`] and [`deserialize`] do the same for an `OwnedFd` field
//! (`#[serde(with = "mp_codec::fd")]`).
//!
//! While a value is encoded, each `Fd` it holds is duplicated into the frame's fd list and
//! encoded as its index there; while a frame is decoded, each index takes its descriptor back
//! out. The frame being built or read is found through a thread-local context, so descriptors
//! can sit anywhere inside an ordinary `serde` type.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A file descriptor that travels with a message.
///
/// Encoding duplicates the descriptor into the frame (the value keeps its own); decoding in
/// another process yields a new descriptor for the same open file. Types that own a descriptor
/// — shared-memory regions, connections, queues — hold one of these and derive `serde`.
///
/// ```
/// use std::io::{Read, Write};
/// use multiprocessing::codec::{Fd, Frame};
///
/// let (mut reader, writer) = std::io::pipe()?;
/// let frame = Frame::encode(&Fd::from(std::os::fd::OwnedFd::from(writer)))?;
/// assert_eq!(frame.fds.len(), 1);
/// let fd: Fd = frame.decode()?;
/// std::fs::File::from(fd.into_inner()).write_all(b"hi")?;
/// let mut got = String::new();
/// reader.read_to_string(&mut got)?;
/// assert_eq!(got, "hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// The owned descriptor.
    pub fn into_inner(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> Self {
        fd.0
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(feature = "serde")]
pub(crate) use with_serde::{
    decode_serde, decode_serde_bytes, encode_serde, encode_serde_small, too_deep,
};
#[cfg(feature = "serde")]
pub use with_serde::{deserialize, refused, rejected, serialize};

#[cfg(feature = "serde")]
mod with_serde {
    use std::{
        cell::{Cell, RefCell},
        os::fd::OwnedFd,
    };

    use std::os::fd::AsFd;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

    use super::Fd;
    use crate::{Error, Frame, Result, depth::Depth};

    thread_local! {
        /// Set when an `Fd` was serialized outside an encode that collects descriptors: the
        /// plain attempt every encode makes first failed because of it, and is redone with
        /// the side channel. (So values that own no descriptor never pay for one, whatever
        /// else this process sends; one that owns some is serialized twice.)
        static FD_MET: Cell<bool> = const { Cell::new(false) };
        /// The fd list of the frame being encoded on this thread, if any.
        static ENCODING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
        /// The descriptors of the frame being decoded on this thread, if any.
        static DECODING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
        /// Why the last `Fd` failed, since postcard keeps no text for custom errors.
        static FAULT: Cell<Option<Fault>> = const { Cell::new(None) };
    }

    enum Fault {
        Missing(u32),
        Dup(i32),
        Rejected(String),
        Refused(String),
        TooDeep,
    }

    impl Fault {
        fn into_error(self) -> Error {
            match self {
                Fault::Missing(index) => Error::MissingFd(index),
                Fault::Dup(errno) => Error::os("dup", std::io::Error::from_raw_os_error(errno)),
                Fault::Rejected(why) => Error::Malformed(why.into()),
                Fault::Refused(why) => Error::Encode(why.into()),
                Fault::TooDeep => Error::TooDeep(crate::MAX_DEPTH),
            }
        }
    }

    /// A deserialization error whose text reaches the caller of `Frame::decode` (as
    /// [`Error::Malformed`]); postcard itself keeps no text for custom errors. For
    /// `Deserialize` impls that check what they receive, e.g. a shared region's header.
    ///
    /// ```
    /// use serde::{Deserialize, Deserializer};
    ///
    /// struct Even(u8);
    /// impl<'de> Deserialize<'de> for Even {
    ///     fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
    ///         match u8::deserialize(d)? {
    ///             n if n % 2 == 0 => Ok(Even(n)),
    ///             n => Err(multiprocessing::codec::fd::rejected(format!("{n} is odd"))),
    ///         }
    ///     }
    /// }
    /// let err = multiprocessing::codec::Frame::encode(&3u8)?.decode::<Even>().err().unwrap();
    /// assert_eq!(err.to_string(), "malformed message: 3 is odd");
    /// # Ok::<(), multiprocessing::codec::Error>(())
    /// ```
    pub fn rejected<E: serde::de::Error>(why: impl std::fmt::Display) -> E {
        fault(Fault::Rejected(why.to_string()), |why| E::custom(why))
    }

    /// A serialization error whose text reaches the caller of `Frame::encode` (as
    /// [`Error::Encode`]), for `Serialize` impls of values that must not be sent.
    ///
    /// ```
    /// struct Secret;
    /// impl serde::Serialize for Secret {
    ///     fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
    ///         Err(multiprocessing::codec::fd::refused("secrets stay here"))
    ///     }
    /// }
    /// let err = multiprocessing::codec::Frame::encode(&Secret).err().unwrap();
    /// assert_eq!(err.to_string(), "cannot encode message: secrets stay here");
    /// ```
    pub fn refused<E: serde::ser::Error>(why: impl std::fmt::Display) -> E {
        fault(Fault::Refused(why.to_string()), |why| E::custom(why))
    }

    /// The error that stops a decode nested deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
    pub(crate) fn too_deep<E: serde::de::Error>() -> E {
        fault(Fault::TooDeep, |_| E::custom("nested too deeply"))
    }

    /// Records why, for `decode_error`/`encode_error`, and makes serde's error for it.
    fn fault<E>(fault: Fault, custom: fn(&str) -> E) -> E {
        let error = match &fault {
            Fault::Rejected(why) | Fault::Refused(why) => custom(why),
            _ => custom(""),
        };
        FAULT.set(Some(fault));
        error
    }

    /// [`Encode::encode_small`](crate::Encode::encode_small) for serde types: the plain
    /// encoding, into `buf`.
    #[inline(always)]
    pub(crate) fn encode_serde_small<T: Serialize + ?Sized>(
        value: &T,
        buf: &mut [u8],
    ) -> Option<usize> {
        let mut out = crate::small::Small { buf, used: 0 };
        match value.serialize(&mut out) {
            Ok(()) => Some(out.used),
            Err(_) => small_failed(),
        }
    }

    /// The plain encoding did not fit, met a descriptor, or failed: forgets what it left
    /// for an encode into a frame to find (which starts again from the beginning).
    #[cold]
    fn small_failed() -> Option<usize> {
        FD_MET.set(false);
        FAULT.take();
        None
    }

    /// Appends to a `Vec` in bulk (postcard's `to_extend` pushes byte by byte).
    struct Append<'a>(&'a mut Vec<u8>);

    impl postcard::ser_flavors::Flavor for Append<'_> {
        type Output = ();

        #[inline]
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            self.0.push(data);
            Ok(())
        }

        #[inline]
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            // A varint or a small field: copies of a size known at compile time, made with a
            // few stores, rather than a call of memcpy (which costs more than such a copy, for
            // every integer of a big message).
            macro_rules! fixed {
                ($($n:literal)*) => {
                    match data.len() {
                        $($n => {
                            let bytes: [u8; $n] = data.try_into().expect("length matched");
                            self.0.extend_from_slice(&bytes);
                        })*
                        _ => self.0.extend_from_slice(data),
                    }
                };
            }
            fixed!(1 2 3 4 5 6 7 8 9 10);
            Ok(())
        }

        #[inline]
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }

    /// Puts the previous context back even if a `Serialize` or `Deserialize` impl panics.
    struct Restore<'k, T: 'static> {
        key: &'static std::thread::LocalKey<RefCell<Option<T>>>,
        prev: Option<T>,
        out: &'k mut Option<T>,
    }

    impl<T> Drop for Restore<'_, T> {
        fn drop(&mut self) {
            let prev = self.prev.take();
            *self.out = self.key.with(|cell| cell.replace(prev));
        }
    }

    #[cold]
    fn encode_error(err: postcard::Error) -> Error {
        match FAULT.take() {
            Some(fault) => fault.into_error(),
            None => Error::Encode(Box::new(err)),
        }
    }

    #[cold]
    fn decode_error(err: postcard::Error) -> Error {
        match FAULT.take() {
            Some(fault) => fault.into_error(),
            None => Error::Malformed(Box::new(err)),
        }
    }

    #[inline(always)]
    pub(crate) fn encode_serde<T: Serialize + ?Sized>(value: &T, frame: &mut Frame) -> Result<()> {
        let start = frame.bytes.len();
        match postcard::serialize_with_flavor(value, Append(&mut frame.bytes)) {
            Ok(()) => Ok(()),
            Err(err) => encode_again(value, frame, start, err),
        }
    }

    /// The plain attempt failed: if that was an `Fd` seen for the first time, redo the value
    /// with a side channel.
    #[cold]
    fn encode_again<T: Serialize + ?Sized>(
        value: &T,
        frame: &mut Frame,
        start: usize,
        err: postcard::Error,
    ) -> Result<()> {
        if !FD_MET.replace(false) {
            return Err(encode_failed(value, err));
        }
        FAULT.take();
        frame.bytes.truncate(start);
        encode_with_fds(value, frame)
    }

    #[inline(never)]
    fn encode_with_fds<T: Serialize + ?Sized>(value: &T, frame: &mut Frame) -> Result<()> {
        let mut fds = None;
        let result = {
            let mine = std::mem::take(&mut frame.fds);
            let _restore = Restore {
                key: &ENCODING,
                prev: ENCODING.with(|cell| cell.replace(Some(mine))),
                out: &mut fds,
            };
            postcard::serialize_with_flavor(value, Append(&mut frame.bytes))
        };
        frame.fds = fds.unwrap_or_default();
        result.map_err(|err| encode_failed(value, err))
    }

    /// The error of a failed encode of `value`. postcard keeps no text for a `Serialize`
    /// impl's custom error, so the value is run once more through `probe` to learn it; that
    /// run takes descriptors as an encode does, into a list closed at once.
    #[cold]
    #[inline(never)]
    fn encode_failed<T: Serialize + ?Sized>(value: &T, err: postcard::Error) -> Error {
        if FAULT.with(|f| {
            let fault = f.take();
            let some = fault.is_some();
            f.set(fault);
            some
        }) || err != postcard::Error::SerdeSerCustom
        {
            return encode_error(err);
        }
        let mut scratch = None;
        let message = {
            let _restore = Restore {
                key: &ENCODING,
                prev: ENCODING.with(|cell| cell.replace(Some(Vec::new()))),
                out: &mut scratch,
            };
            crate::probe::custom_message(value)
        };
        drop(scratch);
        FAULT.take();
        match message {
            Some(message) => Error::Encode(message.into()),
            None => encode_error(err),
        }
    }

    /// postcard's `take_from_bytes`, with nesting limited to [`MAX_DEPTH`](crate::MAX_DEPTH).
    #[inline(always)]
    fn take_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> postcard::Result<(T, &[u8])> {
        let mut de = postcard::Deserializer::from_bytes(bytes);
        let value = T::deserialize(Depth::new(&mut de, crate::MAX_DEPTH))?;
        Ok((value, de.finalize()?))
    }

    #[inline(always)]
    pub(crate) fn decode_serde<T: DeserializeOwned>(frame: &mut Frame) -> Result<T> {
        if !frame.fds.is_empty() {
            return decode_with_fds(frame);
        }
        match take_from_bytes::<T>(&frame.bytes) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(Error::TrailingBytes {
                expected: std::any::type_name::<T>(),
                left: rest.len(),
            }),
            Err(err) => Err(decode_error(err)),
        }
    }

    /// Whether an `Fd` was met outside a collecting encode and not yet handed over (tests).
    #[cfg(test)]
    pub(crate) fn fd_met() -> bool {
        FD_MET.get()
    }

    /// [`decode_serde`] from bytes that own no descriptors.
    #[inline(always)]
    pub(crate) fn decode_serde_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        match take_from_bytes::<T>(bytes) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(Error::TrailingBytes {
                expected: std::any::type_name::<T>(),
                left: rest.len(),
            }),
            Err(err) => Err(decode_error(err)),
        }
    }

    #[inline(never)]
    fn decode_with_fds<T: DeserializeOwned>(frame: &mut Frame) -> Result<T> {
        let mut left = None;
        let result = {
            let mine = std::mem::take(&mut frame.fds)
                .into_iter()
                .map(Some)
                .collect();
            let _restore = Restore {
                key: &DECODING,
                prev: DECODING.with(|cell| cell.replace(Some(mine))),
                out: &mut left,
            };
            take_from_bytes::<T>(&frame.bytes)
        };
        // Descriptors the value did not claim are closed here, with `left`.
        drop(left);
        match result {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(Error::TrailingBytes {
                expected: std::any::type_name::<T>(),
                left: rest.len(),
            }),
            Err(err) => Err(decode_error(err)),
        }
    }

    impl Serialize for Fd {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize(&self.0, serializer)
        }
    }

    impl<'de> Deserialize<'de> for Fd {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserialize(deserializer).map(Fd)
        }
    }

    /// Serializes any descriptor the way [`Fd`] does (duplicated into the frame being
    /// encoded), for `#[serde(with = "mp_codec::fd")]` (through the umbrella crate,
    /// `"multiprocessing::codec::fd"`) on an `OwnedFd` field.
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Handle {
    ///     #[serde(with = "multiprocessing::codec::fd")]
    ///     fd: OwnedFd,
    ///     len: usize,
    /// }
    ///
    /// let (_reader, writer) = std::io::pipe()?;
    /// let frame = multiprocessing::codec::Frame::encode(&Handle { fd: writer.into(), len: 3 })?;
    /// assert_eq!(frame.fds.len(), 1);
    /// let back: Handle = frame.decode()?;
    /// assert_eq!(back.len, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Outside an `mp_codec` encode, or when the descriptor cannot be duplicated.
    pub fn serialize<F: AsFd, S: Serializer>(fd: &F, serializer: S) -> Result<S::Ok, S::Error> {
        {
            let pushed = ENCODING.with(|cell| {
                let mut slot = cell.borrow_mut();
                let Some(fds) = slot.as_mut() else {
                    FD_MET.set(true);
                    return Err("file descriptors can only be encoded by mp_codec");
                };
                match fd.as_fd().try_clone_to_owned() {
                    Ok(dup) => {
                        fds.push(dup);
                        Ok(fds.len() - 1)
                    }
                    Err(err) => {
                        FAULT.set(Some(Fault::Dup(err.raw_os_error().unwrap_or(0))));
                        Err("cannot duplicate a file descriptor")
                    }
                }
            });
            match pushed {
                Ok(index) => {
                    let index = u32::try_from(index).map_err(serde::ser::Error::custom)?;
                    serializer.serialize_u32(index)
                }
                Err(why) => Err(serde::ser::Error::custom(why)),
            }
        }
    }

    /// Takes the descriptor that a value serialized by [`serialize`] refers to, out of the
    /// frame being decoded.
    ///
    /// # Errors
    /// When the frame does not carry that descriptor (or it was already taken).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OwnedFd, D::Error> {
        {
            let index = u32::deserialize(deserializer)?;
            let taken = DECODING.with(|cell| {
                cell.borrow_mut()
                    .as_mut()
                    .and_then(|fds| fds.get_mut(index as usize))
                    .and_then(Option::take)
            });
            match taken {
                Some(fd) => Ok(fd),
                None => {
                    FAULT.set(Some(Fault::Missing(index)));
                    Err(serde::de::Error::custom("missing file descriptor"))
                }
            }
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::OwnedFd,
    };

    use serde::{Deserialize, Serialize};

    use super::Fd;
    use crate::{Decode, Error, Frame};

    #[derive(Serialize, Deserialize)]
    struct Handles {
        name: String,
        first: Fd,
        more: Vec<(u8, Fd)>,
        maybe: Option<Fd>,
    }

    fn pipe() -> (std::io::PipeReader, Fd) {
        let (r, w) = std::io::pipe().unwrap();
        (r, Fd::from(OwnedFd::from(w)))
    }

    fn write_through(fd: Fd, text: &[u8]) {
        std::fs::File::from(fd.into_inner())
            .write_all(text)
            .unwrap();
    }

    fn read_all(mut r: std::io::PipeReader) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn plain_values_and_values_with_fds_alternate_and_plain_ones_never_take_the_fd_path() {
        for round in 0..3 {
            let plain = Frame::encode(&(round, "plain")).unwrap();
            assert!(plain.fds.is_empty());
            assert!(!super::with_serde::fd_met(), "a plain value met an Fd");
            let (r, w) = pipe();
            let frame = Frame::encode(&(round, w)).unwrap();
            assert_eq!(frame.fds.len(), 1);
            // The plain attempt that met the Fd handed over to the fd path, and said so once.
            assert!(!super::with_serde::fd_met());
            let (n, fd): (i32, Fd) = frame.decode().unwrap();
            assert_eq!(n, round);
            write_through(fd, b"x");
            assert_eq!(read_all(r), b"x");
            assert_eq!(
                plain.decode::<(i32, String)>().unwrap(),
                (round, "plain".into())
            );
        }
    }

    #[test]
    fn fds_nested_anywhere_in_a_value_round_trip() {
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        let value = Handles {
            name: "h".into(),
            first: w1,
            more: vec![(9, w2)],
            maybe: None,
        };
        let frame = Frame::encode(&value).unwrap();
        assert_eq!(frame.fds.len(), 2);
        drop(value); // the frame holds duplicates; the originals may go
        let back: Handles = frame.decode().unwrap();
        assert_eq!(back.name, "h");
        assert!(back.maybe.is_none());
        write_through(back.first, b"one");
        let (tag, second) = back.more.into_iter().next().unwrap();
        assert_eq!(tag, 9);
        write_through(second, b"two");
        assert_eq!(read_all(r1), b"one");
        assert_eq!(read_all(r2), b"two");
    }

    #[test]
    fn a_frame_without_its_fds_is_missing_fd() {
        let (_r, w) = pipe();
        let mut frame = Frame::encode(&w).unwrap();
        frame.fds.clear();
        assert!(matches!(Fd::decode(&mut frame), Err(Error::MissingFd(0))));
    }

    #[test]
    fn an_fd_index_used_twice_is_missing_fd() {
        let (_r, w) = pipe();
        let mut frame = Frame::encode(&w).unwrap();
        frame.bytes.push(0); // a second reference to fd #0
        assert!(matches!(
            <(Fd, Fd)>::decode(&mut frame),
            Err(Error::MissingFd(0))
        ));
    }

    #[test]
    fn serializing_an_fd_outside_mp_codec_fails() {
        let (_r, w) = pipe();
        assert!(postcard::to_allocvec(&w).is_err());
        // and leaves nothing behind for the next frame on this thread
        let frame = Frame::encode(&5u8).unwrap();
        assert!(frame.fds.is_empty());
    }

    #[test]
    fn unclaimed_fds_are_closed_when_decoding() {
        let (r, w) = pipe();
        let mut frame = Frame::encode(&w).unwrap();
        drop(w);
        frame.bytes = Frame::encode(&1u8).unwrap().bytes;
        assert_eq!(frame.decode::<u8>().unwrap(), 1);
        // every write end is closed now, so the reader sees end of file
        assert!(read_all(r).is_empty());
    }

    #[test]
    fn frames_without_fds_still_encode_after_fds_were_seen() {
        let (_r, w) = pipe();
        let _ = Frame::encode(&w).unwrap();
        let frame = Frame::encode(&(1u32, "x")).unwrap();
        assert!(frame.fds.is_empty());
        assert_eq!(frame.decode::<(u32, String)>().unwrap(), (1, "x".into()));
    }
}
