//! Keyset pagination: pages that resume after the last row seen, by value rather than
//! by position, so rows inserted or deleted meanwhile never shift a page (no row
//! repeated, none skipped among those that stay).
//!
//! The order is the query's `order_by` keys plus the primary key as the final
//! tie-breaker, in any mix of directions and NULL placements. A [`Cursor`] carries the
//! last row's values of those keys (as PostgreSQL renders them as text, which casts back
//! exactly) and a fingerprint of the order, so a cursor from another order is refused.
//! It is opaque, not secret: its values are bound as parameters, and a forged one only
//! moves the page.

use std::fmt;

use sea_query::{Alias, Expr, ExprTrait};
use serde::{Deserialize, Serialize};

use super::{Decode, OrderBy, Query};
use crate::error::{Error, Result};
use crate::sql::Binder;
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
    // Text first: a bare parameter cast to int4 would be asked for as int4.
    param
        .cast_as(Alias::new("text"))
        .cast_as(Alias::new(meta.columns[column].sql_type))
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
        let (items, more, key_texts) = self.fetch_keyset(size, &keys, values.as_deref()).await?;
        let print = fingerprint(&keys);
        let cursor = |k: &Vec<Option<String>>| cursor_at(&print, k);
        Ok(Page {
            next: if more {
                key_texts.last().map(cursor)
            } else {
                None
            },
            prev: if after.is_some() {
                key_texts.first().map(cursor)
            } else {
                None
            },
            items,
        })
    }

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

    /// Fetches `size + 1` rows in the order `keys` after `values`; returns the rows, whether
    /// there were more, and each row's key values as text.
    async fn fetch_keyset(
        self,
        size: u64,
        keys: &[OrderBy<M>],
        values: Option<&[Option<String>]>,
    ) -> Result<(Vec<D::Output>, bool, Vec<Vec<Option<String>>>)> {
        let meta = M::META;
        let db = self.db.clone();
        let selected = self.selected().len();
        let mut binder = Binder::default();
        let query = Query {
            order: keys.to_vec(),
            limit: Some(size.saturating_add(1)),
            offset: None,
            ..self
        };
        let mut q = query.render(&mut binder);
        for (k, key) in keys.iter().enumerate() {
            let col = Expr::col(Alias::new(meta.columns[key.column].name));
            q.expr_as(
                col.cast_as(Alias::new("text")),
                Alias::new(format!("{KEY_PREFIX}{k}")),
            );
        }
        if let Some(values) = values {
            q.and_where(after_condition(keys, values, &mut binder));
        }
        let bound = binder.finish(q);
        let limit = usize::try_from(size).unwrap_or(usize::MAX);
        crate::db::read_on_conn!(db, "page", meta.name, |conn| {
            let rows = conn.query(&bound.sql, &bound.params()).await?;
            let more = rows.len() > limit;
            let mut items = Vec::with_capacity(rows.len().min(limit));
            let mut texts = Vec::with_capacity(rows.len().min(limit));
            for row in rows.iter().take(limit) {
                items.push(D::decode(row)?);
                let key_texts = (0..keys.len())
                    .map(|k| row.try_get::<_, Option<String>>(selected + k))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                texts.push(key_texts);
            }
            Ok((items, more, texts))
        })
        .await
    }
}
