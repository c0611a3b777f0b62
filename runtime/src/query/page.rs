//! Keyset pagination: pages that resume after the last row seen, by value rather than
//! by position, so rows inserted or deleted meanwhile never shift a page (no row
//! repeated, none skipped among those that stay).
//!
//! The order is the query's `order_by` keys plus the primary key as the final
//! tie-breaker, in any mix of directions and NULL placements. A [`Cursor`] carries the
//! last row's values of those keys (as PostgreSQL renders them as text, which casts back
//! exactly) and a fingerprint of the order, so a cursor from another order is refused.
//! It is opaque, not secret: its values are bound as parameters, and a forged one only
//! moves the page. A cursor is untrusted input, so before any SQL is sent each value
//! is checked against its key column's type (a number that parses and fits, a real
//! date, a UUID, text without NUL, …) and a NULL only for a nullable column; anything
//! else is an [`Error::Validation`], never a database error.

use std::fmt;

use sea_query::{Alias, Expr, ExprTrait};
use serde::{Deserialize, Serialize};

use super::{Decode, OrderBy, Query};
use crate::error::{Error, Result};
use crate::sql::{Binder, Bound};
use crate::table::{Table, TableMeta};

/// Names of the extra key columns a page query selects; row decoders skip them.
pub(crate) const KEY_PREFIX: &str = "__tabula_k";

/// A position in a keyset-paginated query; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(String);

impl Cursor {
    /// Wraps a cursor received from a client (checked when used).
    ///
    /// ```
    /// let c = tabula::query::Cursor::new("7b7d");
    /// assert_eq!(c.as_str(), "7b7d");
    /// ```
    pub fn new(token: impl Into<String>) -> Self {
        Cursor(token.into())
    }

    /// The token to hand to a client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of a keyset-paginated query.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows, in the query's order.
    pub items: Vec<T>,
    /// Resumes after the last item, when more rows follow.
    pub next: Option<Cursor>,
    /// Resumes before the first item (with [`Query::page_before`]), when rows precede it.
    pub prev: Option<Cursor>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Fingerprint of the order the cursor belongs to.
    o: String,
    /// The key values, as text; `None` for NULL.
    k: Vec<Option<String>>,
}

fn fingerprint<M: Table>(keys: &[OrderBy<M>]) -> String {
    let mut text = String::from(M::META.name);
    for key in keys {
        text.push_str(&format!(
            "|{}:{}:{}",
            key.column,
            key.descending,
            key.nulls_come_first()
        ));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn encode(payload: &Payload) -> Cursor {
    let json = serde_json::to_vec(payload).unwrap_or_default();
    Cursor(json.iter().map(|b| format!("{b:02x}")).collect())
}

fn cursor_at(fingerprint: &str, keys: &[Option<String>]) -> Cursor {
    encode(&Payload {
        o: fingerprint.to_owned(),
        k: keys.to_vec(),
    })
}

fn decode<M: Table>(cursor: &Cursor, keys: &[OrderBy<M>]) -> Result<Vec<Option<String>>> {
    let invalid = || Error::Validation(format!("invalid cursor for a query on `{}`", M::META.name));
    let hex = cursor.0.as_bytes();
    if !hex.len().is_multiple_of(2) || hex.len() > 64 * 1024 {
        return Err(invalid());
    }
    let bytes = hex
        .chunks(2)
        .map(|pair| {
            // Hex digits only: `from_str_radix` alone would take a `+` sign.
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(invalid());
            }
            let s = std::str::from_utf8(pair).map_err(|_| invalid())?;
            u8::from_str_radix(s, 16).map_err(|_| invalid())
        })
        .collect::<Result<Vec<u8>>>()?;
    let payload: Payload = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if payload.o != fingerprint(keys) || payload.k.len() != keys.len() {
        return Err(Error::Validation(format!(
            "the cursor belongs to another order of `{}`",
            M::META.name
        )));
    }
    // Each value must be one the key's column can hold, checked here: the cursor is
    // untrusted, and a value PostgreSQL cannot cast would come back as a database
    // error (a server error for what is bad input).
    for (key, value) in keys.iter().zip(&payload.k) {
        let column = &M::META.columns[key.column];
        let fits = match value {
            None => column.nullable,
            Some(text) => key_text_is_valid(column.sql_type, text),
        };
        if !fits {
            return Err(Error::Validation(format!(
                "invalid cursor for a query on `{}`: its value for `{}` is not a {}",
                M::META.name,
                column.name,
                if value.is_some() {
                    column.sql_type
                } else {
                    "non-NULL value"
                }
            )));
        }
    }
    Ok(payload.k)
}

/// Rows strictly after `values` in the order `keys`:
/// OR over i of (keys before i equal, and key i after).
fn after_condition<M: Table>(
    keys: &[OrderBy<M>],
    values: &[Option<String>],
    binder: &mut Binder<'_>,
) -> Expr {
    let meta = M::META;
    let mut any: Option<Expr> = None;
    for i in 0..keys.len() {
        let mut all = after_one(meta, &keys[i], &values[i], binder);
        for j in (0..i).rev() {
            all = equal_one(meta, &keys[j], &values[j], binder).and(all);
        }
        any = Some(match any {
            Some(acc) => acc.or(all),
            None => all,
        });
    }
    any.unwrap_or_else(|| Expr::cust("TRUE"))
}

fn value_expr(meta: &TableMeta, column: usize, text: &str, binder: &mut Binder<'_>) -> Expr {
    let param = binder.owned(std::sync::Arc::new(text.to_owned()));
    // Text first: a bare parameter cast to int4 would be asked for as int4. The type
    // is SQL as the column type gives it (`int8[]`, a quoted enum name), not one
    // identifier.
    Expr::cust_with_expr(
        format!(
            "CAST(CAST($1 AS text) AS {})",
            meta.columns[column].sql_type
        ),
        param,
    )
}

fn after_one<M>(
    meta: &TableMeta,
    key: &OrderBy<M>,
    value: &Option<String>,
    binder: &mut Binder<'_>,
) -> Expr {
    let col = Expr::col(Alias::new(meta.columns[key.column].name));
    match value {
        Some(text) => {
            let v = value_expr(meta, key.column, text, binder);
            let cmp = if key.descending {
                col.clone().lt(v)
            } else {
                col.clone().gt(v)
            };
            if key.nulls_come_first() {
                cmp
            } else {
                cmp.or(col.is_null())
            }
        }
        None if key.nulls_come_first() => col.is_not_null(),
        None => Expr::cust("FALSE"),
    }
}

fn equal_one<M>(
    meta: &TableMeta,
    key: &OrderBy<M>,
    value: &Option<String>,
    binder: &mut Binder<'_>,
) -> Expr {
    let col = Expr::col(Alias::new(meta.columns[key.column].name));
    match value {
        Some(text) => {
            let v = value_expr(meta, key.column, text, binder);
            col.eq(v)
        }
        None => col.is_null(),
    }
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// The order keys with the primary key appended as the last tie-breaker.
    fn keyset_keys(&self) -> Vec<OrderBy<M>> {
        let mut keys = self.order.clone();
        let pk = M::META.primary_key;
        if !keys.iter().any(|k| k.column == pk) {
            keys.push(OrderBy::new(pk, false));
        }
        keys
    }

    /// The first page (`after` = `None`) or the page after a cursor, of at most `size`
    /// rows, in the query's order (primary key as the last tie-breaker).
    pub async fn page(self, size: u64, after: Option<&Cursor>) -> Result<Page<D::Output>> {
        let keys = self.keyset_keys();
        let values = after.map(|c| decode(c, &keys)).transpose()?;
        let fetched = self.fetch_keyset(size, &keys, values.as_deref()).await?;
        Ok(page_after(&keys, after.is_some(), fetched))
    }

    /// [`page`](Self::page) through the result cache (see [`CachedQuery::page`]):
    /// the keys, the statement, and the rows with their key texts when fetched.
    pub(super) fn keyset_plan(
        &self,
        size: u64,
        after: Option<&Cursor>,
    ) -> Result<(Vec<OrderBy<M>>, Bound<'static>)> {
        let keys = self.keyset_keys();
        let values = after.map(|c| decode(c, &keys)).transpose()?;
        let bound = self.bind_keyset(size, &keys, values.as_deref())?;
        Ok((keys, bound))
    }
}

/// One keyset page's rows, whether more follow, and each row's key values as text.
pub(super) type Fetched<T> = (Vec<T>, bool, Vec<Vec<Option<String>>>);

/// The page after a cursor (or the first), from what its statement fetched.
pub(super) fn page_after<M: Table, T>(
    keys: &[OrderBy<M>],
    resumed: bool,
    (items, more, key_texts): Fetched<T>,
) -> Page<T> {
    let print = fingerprint(keys);
    let cursor = |k: &Vec<Option<String>>| cursor_at(&print, k);
    Page {
        next: if more {
            key_texts.last().map(cursor)
        } else {
            None
        },
        prev: if resumed {
            key_texts.first().map(cursor)
        } else {
            None
        },
        items,
    }
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// The page of at most `size` rows just before a cursor (from [`Page::prev`]), in
    /// the query's order.
    pub async fn page_before(self, size: u64, before: &Cursor) -> Result<Page<D::Output>> {
        let keys = self.keyset_keys();
        let values = decode(before, &keys)?;
        let reversed: Vec<OrderBy<M>> = keys.iter().map(OrderBy::reversed).collect();
        let (mut items, more, mut key_texts) =
            self.fetch_keyset(size, &reversed, Some(&values)).await?;
        items.reverse();
        key_texts.reverse();
        let print = fingerprint(&keys);
        let cursor = |k: &Vec<Option<String>>| cursor_at(&print, k);
        Ok(Page {
            prev: if more {
                key_texts.first().map(cursor)
            } else {
                None
            },
            next: key_texts.last().map(cursor),
            items,
        })
    }

    /// The statement of one keyset page, bound: `size + 1` rows in the order `keys`
    /// after `values`, each row followed by its key values as text.
    fn bind_keyset(
        &self,
        size: u64,
        keys: &[OrderBy<M>],
        values: Option<&[Option<String>]>,
    ) -> Result<Bound<'static>> {
        let meta = M::META;
        if size == 0 {
            // A page of none could not say where the next one starts.
            return Err(Error::Validation(format!(
                "a page of `{}` holds at least one row (size 0 asked)",
                meta.name
            )));
        }
        let mut binder = Binder::default();
        let mut q = self.statement(
            &mut binder,
            &self.selected(),
            keys,
            Some(size.saturating_add(1)),
            None,
        )?;
        for (k, key) in keys.iter().enumerate() {
            q.expr_as(
                key_text(meta, key.column),
                Alias::new(format!("{KEY_PREFIX}{k}")),
            );
        }
        if let Some(values) = values {
            q.and_where(after_condition(keys, values, &mut binder));
        }
        self.render_lock(&mut q);
        binder.finish(q).within_limits(meta.name)
    }

    /// Fetches `size + 1` rows in the order `keys` after `values`; returns the rows, whether
    /// there were more, and each row's key values as text.
    async fn fetch_keyset(
        self,
        size: u64,
        keys: &[OrderBy<M>],
        values: Option<&[Option<String>]>,
    ) -> Result<Fetched<D::Output>> {
        let bound = self.bind_keyset(size, keys, values)?;
        self.fetch_bound_keyset(&bound, size, keys.len(), values.is_some())
            .await
    }

    /// Runs a keyset statement of [`bind_keyset`](Self::bind_keyset).
    pub(super) async fn fetch_bound_keyset(
        &self,
        bound: &Bound<'static>,
        size: u64,
        keys: usize,
        from_cursor: bool,
    ) -> Result<Fetched<D::Output>> {
        let selected = self.selected().len();
        let limit = usize::try_from(size).unwrap_or(usize::MAX);
        let fetched = crate::db::read_on_conn!(self.db, "page", M::META.name, |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            let more = rows.len() > limit;
            let mut items = Vec::with_capacity(rows.len().min(limit));
            let mut texts = Vec::with_capacity(rows.len().min(limit));
            for row in rows.iter().take(limit) {
                items.push(D::decode(row)?);
                let key_texts = (0..keys)
                    .map(|k| row.try_get::<_, Option<String>>(selected + k))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                texts.push(key_texts);
            }
            Ok((items, more, texts))
        })
        .await;
        match fetched {
            // A data exception (class 22: invalid text for the type, out of range)
            // can only come from the cursor's values cast back to their columns: the
            // rest of the statement binds typed values.
            Err(Error::Database {
                sqlstate, message, ..
            }) if from_cursor && sqlstate.starts_with("22") => Err(Error::Validation(format!(
                "invalid cursor for a query on `{}`: {message}",
                M::META.name
            ))),
            other => other,
        }
    }
}

/// A key column as the text a cursor carries. Timestamps and dates go through their
/// JSON form, which is ISO 8601 whatever the session's `DateStyle` (their plain text
/// form is not); every other type through its text output. Either casts back exactly.
fn key_text(meta: &TableMeta, column: usize) -> Expr {
    let column = &meta.columns[column];
    match column.sql_type {
        "timestamptz" | "timestamp" | "date" => Expr::cust(format!(
            "to_json({}) #>> '{{}}'",
            crate::sql::quote_ident(column.name)
        )),
        _ => Expr::col(Alias::new(column.name)).cast_as(Alias::new("text")),
    }
}

/// Whether `text` is a value of `sql_type` as a cursor carries it (see [`key_text`]):
/// only forms PostgreSQL casts back without error, so a forged cursor is refused here
/// instead of reaching the database as an invalid-input error. Dates and timestamps
/// outside the years 1 to 9999 are refused too. The checks of `uuid`, `date` and
/// `timestamptz` text come with the `uuid` and `chrono` features: without them no
/// built-in column has those types, and a cursor over a custom one is refused.
fn key_text_is_valid(sql_type: &str, text: &str) -> bool {
    match sql_type {
        "bool" => matches!(text, "true" | "false"),
        "int2" => text.parse::<i16>().is_ok(),
        "int4" => text.parse::<i32>().is_ok(),
        "int8" => text.parse::<i64>().is_ok(),
        "float4" => float_is_valid(text, |t| t.parse::<f32>().map(f64::from).ok()),
        "float8" => float_is_valid(text, |t| t.parse::<f64>().ok()),
        // PostgreSQL text cannot hold NUL.
        "text" => !text.contains('\0'),
        #[cfg(feature = "uuid")]
        "uuid" => text.len() == 36 && uuid::Uuid::parse_str(text).is_ok(),
        #[cfg(feature = "chrono")]
        "date" => is_infinity(text) || date_is_valid(text),
        #[cfg(feature = "chrono")]
        "timestamptz" => is_infinity(text) || timestamp_is_valid(text),
        #[cfg(feature = "chrono")]
        "timestamp" => is_infinity(text) || naive_timestamp_is_valid(text),
        #[cfg(feature = "chrono")]
        "time" => text == "24:00:00" || clock_is_valid(text),
        "inet" => inet_is_valid(text),
        "numeric" => numeric_is_valid(text),
        "bytea" => text.strip_prefix("\\x").is_some_and(|hex| {
            hex.len().is_multiple_of(2) && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }),
        // jsonb rejects the NUL escape; the JSON nesting of serde_json's parser (128)
        // is well inside PostgreSQL's. Not behind the `json` feature: `#[table(json)]`
        // fields are jsonb columns in every build.
        "jsonb" => {
            !text.contains("\\u0000") && serde_json::from_str::<serde_json::Value>(text).is_ok()
        }
        // Enums, arrays, a user's types: no check here beyond what text can hold. A
        // value its type refuses fails the cast in PostgreSQL, which `page` reports as
        // an invalid cursor, not as a server error.
        _ => !text.contains('\0'),
    }
}

#[cfg(feature = "chrono")]
fn is_infinity(text: &str) -> bool {
    matches!(text, "infinity" | "-infinity")
}

/// A float as `float4in` / `float8in` accept it: the special words, or a decimal
/// that neither overflows to infinity nor underflows to zero (both are errors in
/// PostgreSQL, while Rust rounds them silently).
pub(crate) fn float_is_valid(text: &str, parse: impl Fn(&str) -> Option<f64>) -> bool {
    let word = text
        .strip_prefix(['+', '-'])
        .unwrap_or(text)
        .to_ascii_lowercase();
    if matches!(word.as_str(), "nan" | "inf" | "infinity") {
        return !(word == "nan" && text.len() != 3);
    }
    let decimal = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    let Some(value) = parse(text).filter(|_| decimal) else {
        return false;
    };
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let nonzero = mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b));
    value.is_finite() && (value != 0.0 || !nonzero)
}

/// A date as PostgreSQL prints it (ISO style): `YYYY-MM-DD`, the year in four to seven
/// digits (PostgreSQL goes past 9999), and ` BC` after the whole value for years before
/// the first (`0044-03-15 BC`). A real date of the proleptic Gregorian calendar.
#[cfg(feature = "chrono")]
fn date_is_valid(text: &str) -> bool {
    let (text, bc) = before_christ(text);
    date_part_is_valid(text, bc)
}

/// The value without its ` BC` suffix, and whether it had one.
#[cfg(feature = "chrono")]
fn before_christ(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// `YYYY-MM-DD` alone (see [`date_is_valid`]); `bc`: the year counts back.
#[cfg(feature = "chrono")]
fn date_part_is_valid(text: &str, bc: bool) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = text.split('-');
    let (Some(year), Some(month), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if !(4..=7).contains(&year.len()) || month.len() != 2 || day.len() != 2 {
        return false;
    }
    if !(digits(year) && digits(month) && digits(day)) {
        return false;
    }
    let Ok(year) = year.parse::<i32>() else {
        return false;
    };
    // Year 1 BC is the proleptic year 0.
    let proleptic = if bc { 1 - year } else { year };
    year >= 1
        && chrono::NaiveDate::from_ymd_opt(
            proleptic,
            month.parse().unwrap_or(0),
            day.parse().unwrap_or(0),
        )
        .is_some()
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}]` and a UTC offset `Z`, `±HH`, `±HH:MM` or
/// `±HH:MM:SS` (PostgreSQL prints seconds for historical local-mean-time zones), the
/// date as [`date_is_valid`] reads it, ` BC` after the whole value.
#[cfg(feature = "chrono")]
fn timestamp_is_valid(text: &str) -> bool {
    let (text, bc) = before_christ(text);
    let Some(at) = text.find(['T', ' ']) else {
        return false;
    };
    let (date, rest) = text.split_at(at);
    let rest = &rest[1..];
    if !date_part_is_valid(date, bc) {
        return false;
    }
    let (time, offset) = match rest.find(['Z', '+', '-']) {
        Some(at) => rest.split_at(at),
        None => return false,
    };
    let clock_ok = clock_is_valid(time);
    let offset_ok = offset == "Z" || {
        let parts: Vec<&str> = offset[1..].split(':').collect();
        (1..=3).contains(&parts.len())
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit()))
            && parts[0].parse::<u32>().is_ok_and(|h| h <= 15)
            && parts[1..]
                .iter()
                .all(|p| p.parse::<u32>().is_ok_and(|m| m <= 59))
    };
    clock_ok && offset_ok
}

/// `HH:MM:SS[.f{1,6}]`, as PostgreSQL prints a `time` (and the clock of a timestamp).
#[cfg(feature = "chrono")]
fn clock_is_valid(time: &str) -> bool {
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let clock_ok = clock.len() == 8
        && chrono::NaiveTime::parse_from_str(clock, "%H:%M:%S").is_ok()
        && !clock.starts_with("24");
    let fraction_ok = fraction.len() <= 6
        && fraction.bytes().all(|c| c.is_ascii_digit())
        && (fraction.is_empty() != time.contains('.'));
    clock_ok && fraction_ok
}

/// A `timestamp` (without time zone) in its JSON form: `YYYY-MM-DDTHH:MM:SS[.f]`, the
/// date as [`date_is_valid`] reads it, ` BC` after the whole value.
#[cfg(feature = "chrono")]
fn naive_timestamp_is_valid(text: &str) -> bool {
    let (text, bc) = before_christ(text);
    text.split_once('T')
        .is_some_and(|(date, clock)| date_part_is_valid(date, bc) && clock_is_valid(clock))
}

/// An `inet` as PostgreSQL prints it: an address, and a prefix length it can have.
fn inet_is_valid(text: &str) -> bool {
    let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let most = if address.is_ipv4() { 32 } else { 128 };
    prefix.is_empty() || prefix.parse::<u8>().is_ok_and(|p| p <= most)
}

/// A `numeric` as PostgreSQL prints it: digits with an optional sign and point, or
/// one of its special values.
fn numeric_is_valid(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    !(whole.is_empty() && fraction.is_empty())
        && digits.len() <= 1_100
        && whole.bytes().all(|c| c.is_ascii_digit())
        && fraction.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(all(test, feature = "chrono"))]
mod tests {
    use super::{date_is_valid, naive_timestamp_is_valid, timestamp_is_valid};

    #[test]
    fn dates_as_postgresql_prints_them() {
        for ok in [
            "2020-02-29",
            "0001-01-01",
            "9999-12-31",
            "10000-01-01",
            "0044-03-15 BC",
            "0001-02-29 BC",
        ] {
            assert!(date_is_valid(ok), "{ok}");
        }
        for bad in [
            "2021-02-29",
            "0000-01-01",
            "20-01-01",
            "2020-1-01",
            "12345678-01-01",
            "2020-01-01 AD",
            "0002-02-29 BC",
            "",
        ] {
            assert!(!date_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps_past_9999_and_before_christ() {
        assert!(timestamp_is_valid("10000-01-01T00:00:00+00:00"));
        assert!(timestamp_is_valid("0044-03-15T12:00:00+00:53:28 BC"));
        assert!(naive_timestamp_is_valid("10001-06-30T23:59:59.5"));
        assert!(naive_timestamp_is_valid("0044-03-15T12:00:00 BC"));
        assert!(!timestamp_is_valid("10000-01-01T25:00:00+00:00"));
        assert!(!naive_timestamp_is_valid("10000-13-01T00:00:00"));
    }
}
