//! Property tests of the codec and the wire format, through the public API only.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::OwnedFd,
};

use mp_codec::{Bytes, Decode, Encode, Error, Frame, Pod, wire};
use proptest::{collection, option, prelude::*};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Unit,
    Tuple(i64, char),
    Named { label: String, sides: Vec<u16> },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    id: u64,
    delta: i32,
    ratio_bits: f64,
    name: String,
    shapes: Vec<Shape>,
    parent: Option<u128>,
    index: BTreeMap<String, Vec<u8>>,
    flags: HashMap<u32, bool>,
    block: [u32; 4],
}

/// Every other shape serde has, for the small encoder.
#[derive(Serialize, Debug, Clone)]
struct Odds {
    tiny: i8,
    short: i16,
    word: u16,
    yes: bool,
    single: f32,
    letter: Option<char>,
    nothing: (),
    unit: UnitStruct,
    newtype: Newtype,
    pair: (u8, i64),
    tuple: TupleStruct,
    nested: Option<Option<u32>>,
    raw: Vec<u8>,
    kinds: Vec<Kind>,
}

#[derive(Serialize, Debug, Clone)]
struct UnitStruct;

#[derive(Serialize, Debug, Clone)]
struct Newtype(u64);

#[derive(Serialize, Debug, Clone)]
struct TupleStruct(i32, u8);

#[derive(Serialize, Debug, Clone)]
enum Kind {
    Unit,
    New(i16),
    Pair(u8, u8),
    Named { a: u32 },
}

fn odds() -> impl Strategy<Value = Odds> {
    (
        (any::<i8>(), any::<i16>(), any::<u16>(), any::<bool>()),
        (any::<f32>(), option::of(any::<char>()), any::<u64>()),
        ((any::<u8>(), any::<i64>()), (any::<i32>(), any::<u8>())),
        option::of(option::of(any::<u32>())),
        collection::vec(any::<u8>(), 0..40),
        collection::vec(
            prop_oneof![
                Just(Kind::Unit),
                any::<i16>().prop_map(Kind::New),
                (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Kind::Pair(a, b)),
                any::<u32>().prop_map(|a| Kind::Named { a }),
            ],
            0..6,
        ),
    )
        .prop_map(
            |(
                (tiny, short, word, yes),
                (single, letter, n),
                (pair, (t0, t1)),
                nested,
                raw,
                kinds,
            )| {
                Odds {
                    tiny,
                    short,
                    word,
                    yes,
                    single,
                    letter,
                    nothing: (),
                    unit: UnitStruct,
                    newtype: Newtype(n),
                    pair,
                    tuple: TupleStruct(t0, t1),
                    nested,
                    raw,
                    kinds,
                }
            },
        )
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Sample {
    t: u64,
    x: [i32; 6],
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        (any::<i64>(), any::<char>()).prop_map(|(n, c)| Shape::Tuple(n, c)),
        (".{0,12}", collection::vec(any::<u16>(), 0..8))
            .prop_map(|(label, sides)| Shape::Named { label, sides }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        (any::<u64>(), any::<i32>(), -1e300f64..1e300, ".{0,40}"),
        collection::vec(shape(), 0..6),
        option::of(any::<u128>()),
        collection::btree_map(".{0,8}", collection::vec(any::<u8>(), 0..32), 0..5),
        collection::hash_map(any::<u32>(), any::<bool>(), 0..5),
        any::<[u32; 4]>(),
    )
        .prop_map(
            |((id, delta, ratio_bits, name), shapes, parent, index, flags, block)| Record {
                id,
                delta,
                ratio_bits,
                name,
                shapes,
                parent,
                index,
                flags,
                block,
            },
        )
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

fn wire_bytes(payload: &[u8]) -> Vec<u8> {
    let mut head = [0; 12];
    let mut out = wire::header(payload.len(), &mut head).to_vec();
    out.extend_from_slice(payload);
    out
}

/// `encode_small` into a buffer of `room` bytes: when it says yes, the bytes a frame gets;
/// when it says no, the value did not fit or refers to a descriptor (for a type that
/// `tries`; the default never does), and a frame encoding made next is whole.
fn small_agrees<T: Encode + ?Sized>(
    value: &T,
    room: usize,
    tries: bool,
) -> Result<(), TestCaseError> {
    let mut buf = vec![0xa5u8; room];
    let small = value.encode_small(&mut buf);
    let mut frame = Frame::new();
    value.encode(&mut frame).unwrap();
    match small {
        Some(len) => {
            prop_assert!(frame.fds.is_empty());
            prop_assert_eq!(&buf[..len], frame.bytes.as_slice());
        }
        None => prop_assert!(!tries || frame.bytes.len() > room || !frame.fds.is_empty()),
    }
    Ok(())
}

#[test]
fn a_value_with_a_descriptor_is_never_encoded_small_and_still_carries_it() {
    #[derive(Serialize)]
    struct WithFd {
        n: u8,
        fd: mp_codec::Fd,
    }
    let value = WithFd {
        n: 1,
        fd: mp_codec::Fd::from(pair().0),
    };
    assert_eq!(value.encode_small(&mut [0u8; 64]), None);
    let frame = Frame::encode(&value).unwrap();
    assert_eq!(frame.fds.len(), 1, "the next encode collects it");
    // And a value with none, encoded small right after, is not taken for one with some.
    assert_eq!(7u8.encode_small(&mut [0u8; 64]), Some(1));
    assert!(Frame::encode(&7u8).unwrap().fds.is_empty());
}

proptest! {
    #[test]
    fn small_encodings_are_the_frame_encodings(
        record in record(),
        odds in odds(),
        n in any::<u64>(),
        shapes in collection::vec(shape(), 0..4),
        room in 0usize..300,
    ) {
        small_agrees(&record, room, true)?;
        small_agrees(&odds, room, true)?;
        small_agrees(&n, room, true)?;
        small_agrees(&shapes, room, true)?;
        small_agrees(&Pod(n), room, true)?;
        prop_assert_eq!(Bytes(vec![1, 2, 3]).encode_small(&mut [0; 300]), None);
        small_agrees(&Bytes(vec![1, 2, 3]), room, false)?; // the default: never small
    }

    #[test]
    fn sent_frames_are_header_then_payload_at_every_size(
        payload in collection::vec(any::<u8>(), 0..3000),
        with_fd in any::<bool>(),
    ) {
        // Small payloads go out from one contiguous copy, larger ones (or with descriptors)
        // as two slices: the bytes on the wire are the same.
        let (a, b) = pair();
        let fds: Vec<OwnedFd> = if with_fd { vec![pair().0] } else { Vec::new() };
        wire::send_parts(&a, &payload, &fds).unwrap();
        drop(a);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = rustix::io::read(&b, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        prop_assert_eq!(got, wire_bytes(&payload));
    }

    #[test]
    fn records_round_trip(value in record()) {
        let frame = Frame::encode(&value).unwrap();
        prop_assert_eq!(frame.decode::<Record>().unwrap(), value);
    }

    #[test]
    fn pod_values_round_trip(t in any::<u64>(), x in any::<[i32; 6]>(), raw in any::<[u64; 16]>()) {
        let sample = Sample { t, x };
        let frame = Frame::encode(&Pod(sample)).unwrap();
        prop_assert_eq!(frame.bytes.len(), size_of::<Sample>());
        prop_assert_eq!(frame.decode::<Pod<Sample>>().unwrap().0, sample);
        prop_assert_eq!(Frame::encode(&Pod(raw)).unwrap().decode::<Pod<[u64; 16]>>().unwrap().0, raw);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in collection::vec(any::<u8>(), 0..512)) {
        let mut frame = Frame { bytes: bytes.clone(), fds: Vec::new() };
        let _ = Record::decode(&mut frame);
        let mut frame = Frame { bytes: bytes.clone(), fds: Vec::new() };
        let _ = <Vec<Shape>>::decode(&mut frame);
        let mut frame = Frame { bytes: bytes.clone(), fds: Vec::new() };
        let _ = <(String, Option<mp_codec::Fd>)>::decode(&mut frame);
        let mut frame = Frame { bytes, fds: Vec::new() };
        let _ = <Pod<Sample>>::decode(&mut frame);
    }

    #[test]
    fn every_truncated_payload_is_an_error(value in record()) {
        let full = Frame::encode(&value).unwrap().bytes;
        for cut in 0..full.len() {
            let mut frame = Frame { bytes: full[..cut].to_vec(), fds: Vec::new() };
            prop_assert!(Record::decode(&mut frame).is_err(), "prefix of {} bytes decoded", cut);
        }
    }

    #[test]
    fn every_truncated_wire_frame_is_a_clean_error(value in record()) {
        let bytes = wire_bytes(&Frame::encode(&value).unwrap().bytes);
        let mut frame = Frame::new();
        for cut in 0..bytes.len() {
            let (a, b) = pair();
            rustix::io::write(&a, &bytes[..cut]).unwrap();
            drop(a);
            match wire::recv_frame(&b, wire::DEFAULT_MAX_LEN, &mut frame) {
                Err(Error::Closed) => prop_assert_eq!(cut, 0),
                Err(Error::Truncated { expected, got }) => {
                    // Inside the header only the header's own length is known.
                    let whole = if cut < 4 { 4 } else { bytes.len() };
                    prop_assert_eq!(expected, whole as u64);
                    prop_assert_eq!(got, cut as u64);
                }
                other => prop_assert!(false, "cut at {}: {:?}", cut, other),
            }
        }
    }

    #[test]
    fn frames_split_at_any_byte_reassemble(
        payloads in collection::vec(collection::vec(any::<u8>(), 0..300), 1..6),
        splits in collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|p| wire_bytes(p)).collect();
        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let (a, b) = pair();
        let writer = std::thread::spawn(move || {
            for w in cuts.windows(2) {
                if w[0] < w[1] {
                    rustix::io::write(&a, &stream[w[0]..w[1]]).unwrap();
                }
            }
        });
        let mut frame = Frame::new();
        for p in &payloads {
            wire::recv_frame(&b, wire::DEFAULT_MAX_LEN, &mut frame).unwrap();
            prop_assert_eq!(&frame.bytes, p);
        }
        writer.join().unwrap();
        prop_assert!(matches!(
            wire::recv_frame(&b, wire::DEFAULT_MAX_LEN, &mut frame),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn raw_bytes_survive_the_wire(payload in collection::vec(any::<u8>(), 0..4096)) {
        let (a, b) = pair();
        let mut frame = Frame::new();
        Bytes(payload.clone()).encode(&mut frame).unwrap();
        wire::send_frame(&a, &frame).unwrap();
        let mut got = Frame::new();
        wire::recv_frame(&b, wire::DEFAULT_MAX_LEN, &mut got).unwrap();
        prop_assert_eq!(got.decode::<Bytes>().unwrap().0, payload);
    }
}
