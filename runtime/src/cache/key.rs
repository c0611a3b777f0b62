//! The bytes a `#[cached]` key is hashed from: an encoding of the arguments that is
//! *injective* — two different values never encode alike. JSON is not (NaN and the
//! infinities become `null`, `Some(None)` reads as `None`), so memo keys are built with
//! this instead: every value starts with a tag for its kind, carries its exact bits
//! (floats included) or its length, and every sequence, map and struct ends with an
//! end tag, so no encoding is a prefix of another's.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Serializer};

/// The arguments' bytes, or `None` when a `Serialize` impl reported an error.
pub(crate) fn key_bytes<T: Serialize + ?Sized>(value: &T) -> Option<Vec<u8>> {
    let mut writer = KeyWriter { out: Vec::new() };
    value.serialize(&mut writer).ok()?;
    Some(writer.out)
}

#[derive(Debug)]
pub(crate) struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl ser::Error for KeyError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        KeyError(msg.to_string())
    }
}

struct KeyWriter {
    out: Vec<u8>,
}

mod tag {
    pub(super) const BOOL: u8 = 1;
    pub(super) const INT: u8 = 2;
    pub(super) const INT128: u8 = 3;
    pub(super) const UINT: u8 = 4;
    pub(super) const UINT128: u8 = 5;
    pub(super) const F32: u8 = 6;
    pub(super) const F64: u8 = 7;
    pub(super) const CHAR: u8 = 8;
    pub(super) const STR: u8 = 9;
    pub(super) const BYTES: u8 = 10;
    pub(super) const NONE: u8 = 11;
    pub(super) const SOME: u8 = 12;
    pub(super) const UNIT: u8 = 13;
    pub(super) const UNIT_STRUCT: u8 = 14;
    pub(super) const UNIT_VARIANT: u8 = 15;
    pub(super) const NEWTYPE_STRUCT: u8 = 16;
    pub(super) const NEWTYPE_VARIANT: u8 = 17;
    pub(super) const SEQ: u8 = 18;
    pub(super) const END: u8 = 19;
    pub(super) const TUPLE: u8 = 20;
    pub(super) const TUPLE_STRUCT: u8 = 21;
    pub(super) const TUPLE_VARIANT: u8 = 22;
    pub(super) const MAP: u8 = 23;
    pub(super) const STRUCT: u8 = 24;
    pub(super) const STRUCT_VARIANT: u8 = 25;
}

impl KeyWriter {
    fn tag(&mut self, tag: u8) {
        self.out.push(tag);
    }

    fn text(&mut self, text: &str) {
        self.out
            .extend_from_slice(&(text.len() as u64).to_le_bytes());
        self.out.extend_from_slice(text.as_bytes());
    }

    fn variant(&mut self, name: &str, index: u32, variant: &str) {
        self.text(name);
        self.out.extend_from_slice(&index.to_le_bytes());
        self.text(variant);
    }
}

type Res = Result<(), KeyError>;

impl Serializer for &mut KeyWriter {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Res {
        self.tag(tag::BOOL);
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Res {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Res {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Res {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Res {
        self.tag(tag::INT);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Res {
        self.tag(tag::INT128);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Res {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Res {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Res {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Res {
        self.tag(tag::UINT);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Res {
        self.tag(tag::UINT128);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Res {
        // The bits: NaN, the infinities and -0.0 each keep their own key.
        self.tag(tag::F32);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Res {
        self.tag(tag::F64);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Res {
        self.tag(tag::CHAR);
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Res {
        self.tag(tag::STR);
        self.text(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Res {
        self.tag(tag::BYTES);
        self.out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Res {
        self.tag(tag::NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Res {
        self.tag(tag::SOME);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Res {
        self.tag(tag::UNIT);
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Res {
        self.tag(tag::UNIT_STRUCT);
        self.text(name);
        Ok(())
    }
    fn serialize_unit_variant(self, name: &'static str, index: u32, variant: &'static str) -> Res {
        self.tag(tag::UNIT_VARIANT);
        self.variant(name, index, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Res {
        self.tag(tag::NEWTYPE_STRUCT);
        self.text(name);
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Res {
        self.tag(tag::NEWTYPE_VARIANT);
        self.variant(name, index, variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, KeyError> {
        self.tag(tag::SEQ);
        Ok(self)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self, KeyError> {
        self.tag(tag::TUPLE);
        Ok(self)
    }
    fn serialize_tuple_struct(self, name: &'static str, _len: usize) -> Result<Self, KeyError> {
        self.tag(tag::TUPLE_STRUCT);
        self.text(name);
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, KeyError> {
        self.tag(tag::TUPLE_VARIANT);
        self.variant(name, index, variant);
        Ok(self)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, KeyError> {
        self.tag(tag::MAP);
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Self, KeyError> {
        self.tag(tag::STRUCT);
        self.text(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, KeyError> {
        self.tag(tag::STRUCT_VARIANT);
        self.variant(name, index, variant);
        Ok(self)
    }
}

/// Elements follow one another (each self-delimiting); an end tag closes the group.
macro_rules! grouped {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl ser::$trait for &mut KeyWriter {
            type Ok = ();
            type Error = KeyError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
                value.serialize(&mut **self)
            }
            fn end(self) -> Res {
                self.tag(tag::END);
                Ok(())
            }
        }
    )*};
}

grouped!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for &mut KeyWriter {
    type Ok = ();
    type Error = KeyError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Res {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Res {
        value.serialize(&mut **self)
    }
    fn end(self) -> Res {
        self.tag(tag::END);
        Ok(())
    }
}

macro_rules! fielded {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for &mut KeyWriter {
            type Ok = ();
            type Error = KeyError;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Res {
                self.text(name);
                value.serialize(&mut **self)
            }
            fn skip_field(&mut self, name: &'static str) -> Res {
                // A skipped field still marks its place: skipping is part of the value.
                self.tag(tag::UNIT);
                self.text(name);
                Ok(())
            }
            fn end(self) -> Res {
                self.tag(tag::END);
                Ok(())
            }
        }
    )*};
}

fielded!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::key_bytes;

    #[test]
    fn values_json_cannot_tell_apart_get_different_keys() {
        let distinct: Vec<Option<Vec<u8>>> = vec![
            key_bytes(&f64::NAN),
            key_bytes(&f64::INFINITY),
            key_bytes(&f64::NEG_INFINITY),
            key_bytes(&0.0_f64),
            key_bytes(&-0.0_f64),
            key_bytes(&None::<Option<i32>>),
            key_bytes(&Some(None::<i32>)),
            key_bytes(&()),
            key_bytes(&Vec::<i32>::new()),
            key_bytes(&(vec!["a", "b"], "c")),
            key_bytes(&(vec!["a"], "b")),
            key_bytes(&("a", vec!["b", "c"])),
        ];
        for (i, a) in distinct.iter().enumerate() {
            assert!(a.is_some(), "value {i} encodes");
            for (j, b) in distinct.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "values {i} and {j} share a key");
            }
        }
        assert_eq!(key_bytes(&(1_i32, "x")), key_bytes(&(1_i32, "x")));
    }

    #[test]
    fn maps_with_non_string_keys_encode() {
        let map = std::collections::BTreeMap::from([((1, 2), 10)]);
        let other = std::collections::BTreeMap::from([((3, 4), 99)]);
        assert_ne!(key_bytes(&map), key_bytes(&other));
    }
}
