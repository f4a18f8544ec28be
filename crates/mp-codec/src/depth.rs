//! A nesting limit for decoding: [`Depth`] wraps a serde `Deserializer` (postcard's) and fails
//! once a value nests deeper than [`MAX_DEPTH`](crate::MAX_DEPTH) levels.
//!
//! serde decodes a nested value by recursion, and postcard sets no limit, so the bytes choose
//! how deep the stack goes: a 400 KB frame of `Node` tags for `enum Tree { Leaf(u8),
//! Node(Box<Tree>) }` recursed 400 000 times and aborted the process. Here a level is counted
//! where serde recurses: wherever a visitor is handed something to read a nested value from —
//! a sequence (also tuples and structs), a map, an enum's variant, an option's `Some` or a
//! newtype. Counting in the visitor rather than in the `deserialize_*` calls catches every way
//! in, including `deserialize_any` and hand-written `Deserialize` impls.
//!
//! The budget travels by value in each wrapper (`left`: levels still allowed), so there is no
//! shared counter to restore on the way out, and a sibling does not inherit a sibling's depth.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// A `Deserializer`, sequence, map, enum or variant reader with `left` levels of nesting left.
pub(crate) struct Depth<D> {
    inner: D,
    left: usize,
}

impl<D> Depth<D> {
    /// Wraps `inner`, allowing `limit` levels of nesting below it.
    #[inline]
    pub(crate) fn new(inner: D, limit: usize) -> Self {
        Depth { inner, left: limit }
    }
}

/// A visitor that counts one level when serde hands it something nested to read.
struct Nest<V> {
    visitor: V,
    left: usize,
}

/// A seed whose deserializer is wrapped in turn.
struct Seed<S> {
    seed: S,
    left: usize,
}

/// One more level, or the error that stops decoding.
#[inline]
fn deeper<E: de::Error>(left: usize) -> Result<usize, E> {
    match left.checked_sub(1) {
        Some(left) => Ok(left),
        None => Err(crate::fd::too_deep()),
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Nest { visitor, left: self.left })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Depth<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Nest<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let left = deeper(self.left)?;
        self.visitor.visit_some(Depth { inner, left })
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        let left = deeper(self.left)?;
        self.visitor.visit_newtype_struct(Depth { inner, left })
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let left = deeper(self.left)?;
        self.visitor.visit_seq(Depth { inner, left })
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let left = deeper(self.left)?;
        self.visitor.visit_map(Depth { inner, left })
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, inner: A) -> Result<Self::Value, A::Error> {
        let left = deeper(self.left)?;
        self.visitor.visit_enum(Depth { inner, left })
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
        self.seed.deserialize(Depth {
            inner,
            left: self.left,
        })
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Depth<A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let left = self.left;
        self.inner.next_element_seed(Seed { seed, left })
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Depth<A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let left = self.left;
        self.inner.next_key_seed(Seed { seed, left })
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let left = self.left;
        self.inner.next_value_seed(Seed { seed, left })
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Depth<A> {
    type Error = A::Error;
    type Variant = Depth<A::Variant>;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let left = self.left;
        let (value, inner) = self.inner.variant_seed(Seed { seed, left })?;
        Ok((value, Depth { inner, left }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Depth<A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let left = self.left;
        self.inner.newtype_variant_seed(Seed { seed, left })
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let left = self.left;
        self.inner.tuple_variant(len, Nest { visitor, left })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let left = self.left;
        self.inner.struct_variant(fields, Nest { visitor, left })
    }
}
