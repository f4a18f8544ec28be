//! postcard's encoding, written straight into a small buffer of the caller's: the serializer
//! behind [`Encode::encode_small`](crate::Encode::encode_small) for serde types.
//!
//! postcard's own serializer builds each varint in a buffer of its own and hands it to its
//! output flavor byte by byte, each byte checked against the room left: some 50 instructions
//! for a `u64`, the largest part of a short `put` of one. This one writes a varint in place
//! when ten bytes are left (any varint of 64 bits fits), with one check. The bytes are
//! postcard's, exactly (a property test holds the two to each other), and any failure (no
//! room, a descriptor, a sequence of unknown length) is reported as one opaque error: the
//! caller then encodes into a frame, which handles every case and says what went wrong.

use serde::{
    Serialize,
    ser::{self, Serializer},
};

/// The start of a caller's buffer, and how much of it is written.
pub(crate) struct Small<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) used: usize,
}

/// Why an encode into a small buffer stopped: it did not fit, or something in it cannot be
/// encoded without a frame. Carries nothing: the frame encode that follows says why.
#[derive(Debug)]
pub(crate) struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not encodable into a small buffer")
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

type Result<T = ()> = std::result::Result<T, Stop>;

/// The most bytes a varint of 64 bits takes.
const VARINT64: usize = 10;

impl Small<'_> {
    #[inline(always)]
    fn byte(&mut self, b: u8) -> Result {
        *self.buf.get_mut(self.used).ok_or(Stop)? = b;
        self.used += 1;
        Ok(())
    }

    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) -> Result {
        let end = self.used.checked_add(b.len()).ok_or(Stop)?;
        self.buf
            .get_mut(self.used..end)
            .ok_or(Stop)?
            .copy_from_slice(b);
        self.used = end;
        Ok(())
    }

    /// `v` as a varint: seven bits a byte, least significant first, the top bit set on every
    /// byte but the last (postcard's `varint_u64`).
    #[inline(always)]
    fn varint(&mut self, mut v: u64) -> Result {
        let Some(out) = self
            .buf
            .get_mut(self.used..)
            .and_then(|rest| rest.first_chunk_mut::<VARINT64>())
        else {
            return self.varint128(u128::from(v));
        };
        let mut i = 0;
        while v >= 0x80 && i < VARINT64 - 1 {
            out[i] = v as u8 | 0x80;
            v >>= 7;
            i += 1;
        }
        out[i] = v as u8;
        self.used += i + 1;
        Ok(())
    }

    /// As [`Small::varint`], for 128 bits, and for any value near the end of the buffer:
    /// byte by byte, each checked.
    #[inline(never)]
    fn varint128(&mut self, mut v: u128) -> Result {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }

    #[inline(always)]
    fn len(&mut self, len: usize) -> Result {
        self.varint(len as u64)
    }

    /// An enum variant's index (what comes before its fields, if any).
    #[inline(always)]
    fn variant(&mut self, index: u32) -> Result {
        self.varint(u64::from(index))
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

impl Serializer for &mut Small<'_> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline(always)]
    fn serialize_bool(self, v: bool) -> Result {
        self.byte(u8::from(v))
    }

    #[inline(always)]
    fn serialize_i8(self, v: i8) -> Result {
        self.byte(v as u8)
    }

    #[inline(always)]
    fn serialize_i16(self, v: i16) -> Result {
        self.varint(zigzag(i64::from(v)))
    }

    #[inline(always)]
    fn serialize_i32(self, v: i32) -> Result {
        self.varint(zigzag(i64::from(v)))
    }

    #[inline(always)]
    fn serialize_i64(self, v: i64) -> Result {
        self.varint(zigzag(v))
    }

    fn serialize_i128(self, v: i128) -> Result {
        self.varint128(((v << 1) ^ (v >> 127)) as u128)
    }

    #[inline(always)]
    fn serialize_u8(self, v: u8) -> Result {
        self.byte(v)
    }

    #[inline(always)]
    fn serialize_u16(self, v: u16) -> Result {
        self.varint(u64::from(v))
    }

    #[inline(always)]
    fn serialize_u32(self, v: u32) -> Result {
        self.varint(u64::from(v))
    }

    #[inline(always)]
    fn serialize_u64(self, v: u64) -> Result {
        self.varint(v)
    }

    fn serialize_u128(self, v: u128) -> Result {
        self.varint128(v)
    }

    #[inline(always)]
    fn serialize_f32(self, v: f32) -> Result {
        self.bytes(&v.to_bits().to_le_bytes())
    }

    #[inline(always)]
    fn serialize_f64(self, v: f64) -> Result {
        self.bytes(&v.to_bits().to_le_bytes())
    }

    fn serialize_char(self, v: char) -> Result {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, v: &str) -> Result {
        self.serialize_bytes(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.len(v.len())?;
        self.bytes(v)
    }

    #[inline(always)]
    fn serialize_none(self) -> Result {
        self.byte(0)
    }

    #[inline(always)]
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
        self.byte(1)?;
        value.serialize(self)
    }

    #[inline(always)]
    fn serialize_unit(self) -> Result {
        Ok(())
    }

    #[inline(always)]
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        Ok(())
    }

    #[inline(always)]
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result {
        self.variant(index)
    }

    #[inline(always)]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> Result {
        value.serialize(self)
    }

    #[inline(always)]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result {
        self.variant(index)?;
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.len(len.ok_or(Stop)?).map(|()| self)
    }

    #[inline(always)]
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline(always)]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.variant(index).map(|()| self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.len(len.ok_or(Stop)?).map(|()| self)
    }

    #[inline(always)]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.variant(index).map(|()| self)
    }

    /// postcard writes the text's length first, which takes formatting it twice; a frame
    /// encode does that.
    fn collect_str<T: ?Sized + std::fmt::Display>(self, _: &T) -> Result {
        Err(Stop)
    }
}

/// The compound parts: each element, field, key or value in turn, nothing around them.
macro_rules! compound {
    ($($trait:ident :: $method:ident ($($key:ident),*)),* $(,)?) => {$(
        impl ser::$trait for &mut Small<'_> {
            type Ok = ();
            type Error = Stop;

            #[inline(always)]
            fn $method<T: ?Sized + Serialize>(&mut self, $($key: &'static str,)* value: &T) -> Result {
                $(let _ = $key;)*
                value.serialize(&mut **self)
            }

            #[inline(always)]
            fn end(self) -> Result {
                Ok(())
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(key),
    SerializeStructVariant::serialize_field(key),
);

impl ser::SerializeMap for &mut Small<'_> {
    type Ok = ();
    type Error = Stop;

    #[inline(always)]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result {
        key.serialize(&mut **self)
    }

    #[inline(always)]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
        value.serialize(&mut **self)
    }

    #[inline(always)]
    fn end(self) -> Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small<T: Serialize + ?Sized>(value: &T, room: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; room];
        let mut out = Small {
            buf: &mut buf,
            used: 0,
        };
        value.serialize(&mut out).ok()?;
        let used = out.used;
        Some(buf[..used].to_vec())
    }

    #[test]
    fn varints_are_postcards_at_every_length_and_at_the_buffers_end() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, u64::MAX >> shift] {
                let want = postcard::to_allocvec(&v).unwrap();
                // Room for a whole varint, then exactly enough, then one byte short.
                assert_eq!(small(&v, 64).unwrap(), want, "{v}");
                assert_eq!(small(&v, want.len()).unwrap(), want, "{v}");
                assert_eq!(small(&v, want.len() - 1), None, "{v}");
                let i = v as i64;
                assert_eq!(small(&i, 64).unwrap(), postcard::to_allocvec(&i).unwrap());
            }
        }
        for v in [0u128, u128::MAX, 1 << 100] {
            assert_eq!(small(&v, 64).unwrap(), postcard::to_allocvec(&v).unwrap());
            let i = v as i128;
            assert_eq!(small(&i, 64).unwrap(), postcard::to_allocvec(&i).unwrap());
        }
    }

    #[test]
    fn a_string_made_by_display_goes_to_a_frame() {
        struct Shown;
        impl Serialize for Shown {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str("shown")
            }
        }
        assert_eq!(small(&Shown, 64), None);
    }
}
