//! Learning what a failed `Serialize` impl said. postcard keeps no text for serde's custom
//! errors (`S::Error::custom("…")`, what nearly every impl returns): its error says only
//! "Serde Serialization Error". After such a failure the value is serialized once more, into
//! [`Probe`], a serializer that writes nothing and whose error keeps the text. Only a failed
//! encode pays for it.

use std::fmt;

use serde::{Serialize, Serializer, ser};

/// What the first custom error raised while serializing `value` said, if one was raised.
pub(crate) fn custom_message<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    value.serialize(Probe).err().map(|Said(message)| message)
}

/// A serializer that accepts every value and writes nothing.
struct Probe;

/// The text of a custom error.
#[derive(Debug)]
struct Said(String);

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Said {}

impl ser::Error for Said {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Said(message.to_string())
    }
}

type Done = Result<(), Said>;

macro_rules! accept {
    ($($method:ident($($ty:ty),*);)*) => {
        $(fn $method(self, $(_: $ty),*) -> Done { Ok(()) })*
    };
}

impl Serializer for Probe {
    type Ok = ();
    type Error = Said;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    accept! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        value.serialize(Probe)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Done {
        value.serialize(Probe)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Done {
        value.serialize(Probe)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Probe, Said> {
        Ok(Probe)
    }

    fn serialize_tuple(self, _: usize) -> Result<Probe, Said> {
        Ok(Probe)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, Said> {
        Ok(Probe)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, Said> {
        Ok(Probe)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Probe, Said> {
        Ok(Probe)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Probe, Said> {
        Ok(Probe)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, Said> {
        Ok(Probe)
    }
}

macro_rules! compound {
    ($($trait:ident { $($method:ident($($key:ty)?);)* })*) => {
        $(impl ser::$trait for Probe {
            type Ok = ();
            type Error = Said;

            $(fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)? value: &T) -> Done {
                value.serialize(Probe)
            })*

            fn end(self) -> Done {
                Ok(())
            }
        })*
    };
}

compound! {
    SerializeSeq { serialize_element(); }
    SerializeTuple { serialize_element(); }
    SerializeTupleStruct { serialize_field(); }
    SerializeTupleVariant { serialize_field(); }
    SerializeMap { serialize_key(); serialize_value(); }
    SerializeStruct { serialize_field(&'static str); }
    SerializeStructVariant { serialize_field(&'static str); }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuses;

    impl Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("not this one"))
        }
    }

    #[test]
    fn the_first_custom_error_inside_any_nesting_is_found() {
        let nested = (1u8, vec![Some("a")], [(String::new(), Refuses)]);
        assert_eq!(custom_message(&nested).as_deref(), Some("not this one"));
        assert_eq!(custom_message(&(1u8, "fine", vec![2.5f64])), None);
    }
}
