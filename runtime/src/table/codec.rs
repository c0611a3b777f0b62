//! How the row cache stores a row: its columns, in [`TableMeta::columns`] order, each
//! written by its type's [`CacheCodec`]. Generated code walks the columns; the model's
//! own `serde` impls are never used, so `#[serde(skip)]`, renames and custom
//! serializers cannot change what a cache hit returns, and a model needs no serde
//! derives to be cached.
//!
//! The form is compact binary: fixed-width little-endian numbers, a LEB128 length
//! before every variable-length value, a tag byte before an `Option`'s value.
//! `#[table(json)]` fields and `serde_json::Value` are length-prefixed JSON, which is
//! the column's own representation in PostgreSQL. Like the column types, the codecs of
//! `Uuid`, the chrono types and `serde_json::Value` come with tabula's `uuid`, `chrono`
//! and `json` features.
//!
//! Cached bytes come from a server, so decoding trusts nothing: any malformed,
//! truncated or overlong input decodes to `None` (a miss) and never panics or
//! allocates more than the input's length. An entry is also prefixed with the model's
//! shape hash, which mixes in [`CODEC_VERSION`]: changing this format means bumping
//! the version, and every old entry becomes a miss.
//!
//! [`TableMeta::columns`]: super::TableMeta::columns

#[cfg(feature = "chrono")]
use chrono::{DateTime, NaiveDate, Utc};
#[cfg(feature = "uuid")]
use uuid::Uuid;

/// The version of this encoding, mixed into every model's shape hash.
pub const CODEC_VERSION: u32 = 1;

/// A column value as stored in the row cache.
///
/// Implemented for every built-in column type (see [`ColumnType`](crate::ColumnType))
/// and `Option` of each. A custom column type used in a model with
/// `cache(ttl = …)` implements it too. The contract: `decode` of what `encode` wrote
/// returns an equal value and consumes exactly those bytes; `decode` of anything else
/// returns `None` without panicking.
///
/// ```
/// use tabula::table::{CacheCodec, CodecReader};
///
/// let mut bytes = Vec::new();
/// Some("hello".to_owned()).encode(&mut bytes);
/// let mut reader = CodecReader::new(&bytes);
/// assert_eq!(Option::<String>::decode(&mut reader), Some(Some("hello".to_owned())));
/// assert!(reader.is_empty());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in the row cache",
    label = "no row-cache encoding",
    note = "the row cache stores every built-in column type (see `tabula::ColumnType`), #[derive(PgEnum)] enums, `tabula::CustomColumn` types, and Option and Vec of each",
    note = "implement `tabula::CustomColumn` for it and invoke `tabula::custom_column!`, or mark the field #[table(json)]"
)]
// As for `ColumnType`: a build without a type's feature says so after the list.
#[cfg_attr(
    not(feature = "uuid"),
    diagnostic::on_unimplemented(note = "`Uuid` needs tabula's `uuid` feature, off in this build")
)]
#[cfg_attr(
    not(feature = "chrono"),
    diagnostic::on_unimplemented(
        note = "`DateTime<Utc>` and `NaiveDate` need tabula's `chrono` feature, off in this build"
    )
)]
#[cfg_attr(
    not(feature = "json"),
    diagnostic::on_unimplemented(
        note = "`serde_json::Value` needs tabula's `json` feature, off in this build"
    )
)]
pub trait CacheCodec: Sized {
    /// Appends this value's encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Reads one value; `None` when the bytes are not a valid encoding.
    fn decode(input: &mut CodecReader<'_>) -> Option<Self>;
}

/// A cursor over cached bytes. Every read checks the length first.
#[derive(Debug)]
pub struct CodecReader<'a> {
    bytes: &'a [u8],
}

impl<'a> CodecReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        CodecReader { bytes }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A length written by [`write_len`]; never more than the bytes left, so a corrupt
    /// length cannot make a caller allocate more than the input holds.
    pub fn len_prefix(&mut self) -> Option<usize> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let [byte] = self.array::<1>()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && bits > 1 {
                return None;
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                let len = usize::try_from(value).ok()?;
                return (len <= self.bytes.len()).then_some(len);
            }
        }
        None
    }

    /// A length-prefixed run of bytes.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.len_prefix()?;
        self.take(len)
    }

    /// `Some(())` when every byte has been read: trailing bytes mean the entry is not
    /// what the reader expected.
    pub fn finish(self) -> Option<()> {
        self.is_empty().then_some(())
    }
}

/// Writes `len` as LEB128 (7 bits a byte, low first).
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    let mut value = len as u64;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes a length-prefixed run of bytes.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

macro_rules! fixed_width {
    ($($ty:ty),* $(,)?) => {$(
        impl CacheCodec for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
                input.array().map(<$ty>::from_le_bytes)
            }
        }
    )*};
}

// Floats go through `to_le_bytes` too: every bit pattern (NaN payloads, -0.0) survives.
fixed_width!(i16, i32, i64, f32, f64);

impl CacheCodec for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        match input.array::<1>()? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

impl CacheCodec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        write_bytes(out, self.as_bytes());
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        std::str::from_utf8(input.bytes()?).ok().map(str::to_owned)
    }
}

impl CacheCodec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        write_bytes(out, self);
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        input.bytes().map(<[u8]>::to_vec)
    }
}

#[cfg(feature = "uuid")]
#[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
impl CacheCodec for Uuid {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        input.array().map(Uuid::from_bytes)
    }
}

/// Seconds and nanoseconds since the epoch: exact for every `DateTime<Utc>`, leap
/// seconds included (nanoseconds up to 1,999,999,999).
#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
impl CacheCodec for DateTime<Utc> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.timestamp().encode(out);
        out.extend_from_slice(&self.timestamp_subsec_nanos().to_le_bytes());
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        let seconds = i64::decode(input)?;
        let nanos = u32::from_le_bytes(input.array()?);
        DateTime::from_timestamp(seconds, nanos)
    }
}

/// Days since 1 January of year 1 (the Common Era).
#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
impl CacheCodec for NaiveDate {
    fn encode(&self, out: &mut Vec<u8>) {
        chrono::Datelike::num_days_from_ce(self).encode(out);
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        NaiveDate::from_num_days_from_ce_opt(i32::decode(input)?)
    }
}

/// Seconds and nanoseconds since the epoch, as for `DateTime<Utc>`.
#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
impl CacheCodec for chrono::NaiveDateTime {
    fn encode(&self, out: &mut Vec<u8>) {
        self.and_utc().encode(out);
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        DateTime::<Utc>::decode(input).map(|at| at.naive_utc())
    }
}

/// Seconds since midnight and nanoseconds (up to 1,999,999,999: a leap second).
#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
impl CacheCodec for chrono::NaiveTime {
    fn encode(&self, out: &mut Vec<u8>) {
        use chrono::Timelike;
        out.extend_from_slice(&self.num_seconds_from_midnight().to_le_bytes());
        out.extend_from_slice(&self.nanosecond().to_le_bytes());
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        let seconds = u32::from_le_bytes(input.array()?);
        let nanos = u32::from_le_bytes(input.array()?);
        chrono::NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos)
    }
}

/// A tag byte (4 or 6), then the address's bytes. (An `inet` column's netmask is not
/// part of `IpAddr`: PostgreSQL sends it, tokio-postgres drops it, and so does the cache.)
impl CacheCodec for std::net::IpAddr {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            std::net::IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        match input.array::<1>()? {
            [4] => Some(std::net::Ipv4Addr::from(input.array::<4>()?).into()),
            [6] => Some(std::net::Ipv6Addr::from(input.array::<16>()?).into()),
            _ => None,
        }
    }
}

/// The 96-bit mantissa as an `i128` and the scale; a scale over 28 or a mantissa out of
/// range is no `Decimal`, so a miss.
#[cfg(feature = "decimal")]
#[cfg_attr(docsrs, doc(cfg(feature = "decimal")))]
impl CacheCodec for rust_decimal::Decimal {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mantissa().to_le_bytes());
        out.extend_from_slice(&self.scale().to_le_bytes());
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        let mantissa = i128::from_le_bytes(input.array()?);
        let scale = u32::from_le_bytes(input.array()?);
        rust_decimal::Decimal::try_from_i128_with_scale(mantissa, scale).ok()
    }
}

/// Length-prefixed JSON text, as PostgreSQL's `jsonb` holds it.
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl CacheCodec for serde_json::Value {
    fn encode(&self, out: &mut Vec<u8>) {
        // Serializing a `Value` cannot fail (its map keys are strings, its numbers
        // finite); were it to, the empty text written instead is invalid JSON, so the
        // entry would decode as a miss rather than as a wrong value.
        write_bytes(out, &serde_json::to_vec(self).unwrap_or_default());
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        serde_json::from_slice(input.bytes()?).ok()
    }
}

/// A tag byte (0: `None`, 1: `Some`), then the value.
impl<T: CacheCodec> CacheCodec for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.encode(out);
            }
        }
    }
    fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
        match input.array::<1>()? {
            [0] => Some(None),
            [1] => T::decode(input).map(Some),
            _ => None,
        }
    }
}

/// Encodes a `#[table(json)]` field: its JSON (the column's own form), length-prefixed.
/// `None` when its `Serialize` fails; the row is then not cached.
pub fn encode_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Option<()> {
    write_bytes(out, &serde_json::to_vec(value).ok()?);
    Some(())
}

/// Decodes a `#[table(json)]` field.
pub fn decode_json<T: serde::de::DeserializeOwned>(input: &mut CodecReader<'_>) -> Option<T> {
    serde_json::from_slice(input.bytes()?).ok()
}

/// Encodes a nullable `#[table(json)]` field: a tag byte, then the JSON of the value.
pub fn encode_json_opt<T: serde::Serialize>(value: &Option<T>, out: &mut Vec<u8>) -> Option<()> {
    match value {
        None => {
            out.push(0);
            Some(())
        }
        Some(value) => {
            out.push(1);
            encode_json(value, out)
        }
    }
}

/// Decodes a nullable `#[table(json)]` field.
pub fn decode_json_opt<T: serde::de::DeserializeOwned>(
    input: &mut CodecReader<'_>,
) -> Option<Option<T>> {
    match input.array::<1>()? {
        [0] => Some(None),
        [1] => decode_json(input).map(Some),
        _ => None,
    }
}

/// Whether two values have the same encoding by `encode` (a `CacheCodec::encode`):
/// how a `unique` lookup checks that the row it was led to still holds the value it
/// was asked for. Generated code passes `<T as CacheCodec>::encode` rather than this
/// function having the bound, so an unsupported type is reported once, not here too.
pub fn same_encoding<T>(a: &T, b: &T, encode: fn(&T, &mut Vec<u8>)) -> bool {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    encode(a, &mut x);
    encode(b, &mut y);
    x == y
}

/// The same for `#[table(json)]` fields, compared by their JSON.
pub fn same_json<T: serde::Serialize + ?Sized>(a: &T, b: &T) -> bool {
    match (serde_json::to_vec(a), serde_json::to_vec(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// A model's shape hash (FNV-1a, computed by the derive) continued over the codec
/// version, so that a change of encoding changes every shape and old entries miss.
pub const fn row_shape(model_shape: u64) -> u64 {
    let version = CODEC_VERSION.to_le_bytes();
    let mut hash = model_shape;
    let mut i = 0;
    while i < b"|codec:".len() + version.len() {
        let byte = if i < b"|codec:".len() {
            b"|codec:"[i]
        } else {
            version[i - b"|codec:".len()]
        };
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: CacheCodec + PartialEq + std::fmt::Debug>(value: T) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        let mut reader = CodecReader::new(&bytes);
        assert_eq!(T::decode(&mut reader).as_ref(), Some(&value), "{value:?}");
        assert!(reader.is_empty(), "{value:?} left bytes unread");
        // Every strict prefix is a miss, never a panic or a shorter value.
        for cut in 0..bytes.len() {
            let decoded = T::decode(&mut CodecReader::new(&bytes[..cut]));
            assert!(
                decoded.is_none(),
                "{value:?} cut at {cut} decoded as {decoded:?}"
            );
        }
    }

    #[test]
    fn every_column_type_round_trips() {
        round_trip(true);
        round_trip(false);
        round_trip(i16::MIN);
        round_trip(i32::MAX);
        round_trip(i64::MIN);
        round_trip(f32::MIN_POSITIVE);
        round_trip(-0.0f64);
        round_trip(String::new());
        round_trip("héllo \u{0} wörld".to_owned());
        round_trip("x".repeat(20_000));
        round_trip(vec![0u8, 255, 7]);
        #[cfg(feature = "uuid")]
        round_trip(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));
        #[cfg(feature = "chrono")]
        round_trip(DateTime::<Utc>::MIN_UTC);
        #[cfg(feature = "chrono")]
        round_trip(DateTime::<Utc>::MAX_UTC);
        #[cfg(feature = "chrono")]
        round_trip(DateTime::from_timestamp(1_699_999_979, 1_999_999_999).expect("leap"));
        #[cfg(feature = "chrono")]
        round_trip(NaiveDate::MIN);
        #[cfg(feature = "chrono")]
        round_trip(NaiveDate::MAX);
        #[cfg(feature = "json")]
        round_trip(serde_json::json!({"a": [1, 2.5, null, "s"], "b": {}}));
        round_trip(Some(Some(3i32)));
        round_trip(Option::<String>::None);
    }

    #[test]
    fn nan_keeps_its_bits() {
        let nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let mut bytes = Vec::new();
        nan.encode(&mut bytes);
        let back = f64::decode(&mut CodecReader::new(&bytes)).expect("decodes");
        assert_eq!(back.to_bits(), nan.to_bits());
    }

    #[test]
    fn lengths_use_leb128_and_are_bounded_by_the_input() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, usize::MAX] {
            let mut bytes = Vec::new();
            write_len(&mut bytes, len);
            let mut reader = CodecReader::new(&bytes);
            // Nothing follows the prefix, so only a zero length is acceptable.
            assert_eq!(reader.len_prefix(), (len == 0).then_some(0), "len {len}");
        }
        // A run of continuation bytes longer than a u64 is rejected.
        let mut reader = CodecReader::new(&[0xff; 11]);
        assert_eq!(reader.len_prefix(), None);
        // A tenth byte carrying more than one bit would overflow.
        let mut overflow = vec![0xff; 9];
        overflow.push(0x02);
        assert_eq!(CodecReader::new(&overflow).len_prefix(), None);
    }

    #[test]
    fn invalid_tags_and_text_are_misses() {
        assert_eq!(bool::decode(&mut CodecReader::new(&[2])), None);
        assert_eq!(
            Option::<i16>::decode(&mut CodecReader::new(&[7, 0, 0])),
            None
        );
        assert_eq!(
            String::decode(&mut CodecReader::new(&[2, 0xc3, 0x28])),
            None
        );
        #[cfg(feature = "json")]
        assert_eq!(
            serde_json::Value::decode(&mut CodecReader::new(&[0])),
            None,
            "empty JSON text"
        );
        #[cfg(feature = "chrono")]
        assert_eq!(
            DateTime::<Utc>::decode(&mut CodecReader::new(&[0xff; 12])),
            None,
            "out of range"
        );
    }

    #[test]
    fn the_codec_version_changes_every_shape() {
        for shape in [0, 1, 0xcbf2_9ce4_8422_2325, u64::MAX] {
            assert_ne!(row_shape(shape), shape);
        }
    }
}

macro_rules! tuple_codecs {
    ($(($($t:ident $i:tt),+)),* $(,)?) => {$(
        impl<$($t: CacheCodec),+> CacheCodec for ($($t,)+) {
            fn encode(&self, out: &mut Vec<u8>) {
                $(self.$i.encode(out);)+
            }
            fn decode(input: &mut CodecReader<'_>) -> Option<Self> {
                Some(($($t::decode(input)?,)+))
            }
        }
    )*};
}

// Rows of a selection of columns (see `Query::select`).
tuple_codecs!(
    (A 0),
    (A 0, B 1),
    (A 0, B 1, C 2),
    (A 0, B 1, C 2, D 3),
    (A 0, B 1, C 2, D 3, E 4),
    (A 0, B 1, C 2, D 3, E 4, F 5),
);
