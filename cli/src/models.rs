//! The application models a `tabula` binary knows: what `cache get` decodes and
//! `cache warm` reads. The published binary knows none; an application builds its own
//! with [`main_with`](crate::main_with).

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use tabula::cache::{CachedEntry, CachedRow};
use tabula::{Db, Table, TableMeta};

use crate::Failure;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + 'a>>;
/// Reads a model's rows into the cache: (rows read, entries filled).
type Warm = for<'a> fn(&'a Db, Option<u64>, &'a indicatif::ProgressBar) -> Boxed<'a, (u64, u64)>;

/// The set of models a binary is built with: a tuple of up to twelve (`(Profile,)`
/// for one), each `Table + Clone + Serialize` (rows are printed as JSON); `()` for
/// none.
pub trait Models {
    /// What the binary can do with each model.
    fn models() -> Vec<Model>;
}

/// One model, as the command line uses it.
pub struct Model {
    meta: &'static TableMeta,
    /// The Rust type's name, without its path.
    type_name: &'static str,
    get: for<'a> fn(&'a Db, &'a str) -> Boxed<'a, Value>,
    warm: Warm,
}

impl Models for () {
    fn models() -> Vec<Model> {
        Vec::new()
    }
}

macro_rules! model_tuples {
    ($(($($m:ident),+)),* $(,)?) => {$(
        impl<$($m: Table + Clone + serde::Serialize),+> Models for ($($m,)+) {
            fn models() -> Vec<Model> {
                vec![$(model::<$m>()),+]
            }
        }
    )*};
}

model_tuples!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, F),
    (A, B, C, D, E, F, G),
    (A, B, C, D, E, F, G, H),
    (A, B, C, D, E, F, G, H, I),
    (A, B, C, D, E, F, G, H, I, J),
    (A, B, C, D, E, F, G, H, I, J, K),
    (A, B, C, D, E, F, G, H, I, J, K, L),
);

fn model<M: Table + Clone + serde::Serialize>() -> Model {
    let full = std::any::type_name::<M>();
    Model {
        meta: M::META,
        type_name: full.rsplit("::").next().unwrap_or(full),
        get: |db, key| Box::pin(get::<M>(db, key)),
        warm: |db, limit, bar| Box::pin(warm::<M>(db, limit, bar)),
    }
}

/// The model `name` (its table, `schema.table`, or its Rust type's name) among `models`.
pub(crate) fn find<'m>(models: &'m [Model], name: &str) -> Result<&'m Model, Failure> {
    let found: Vec<&Model> = models
        .iter()
        .filter(|m| m.meta.name == name || m.meta.qualified_name() == name || m.type_name == name)
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] if models.is_empty() => Err(Failure::refused(format!(
            "unknown model `{name}`: this binary knows no models — `cache get` and `cache \
             warm` need a `tabula` built with your models (tabula_cli::main_with::<(…)>())"
        ))),
        [] => Err(Failure::refused(format!(
            "unknown model `{name}`; this binary knows: {}",
            models
                .iter()
                .map(|m| format!("{} ({})", m.meta.qualified_name(), m.type_name))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Err(Failure::refused(format!(
            "`{name}` names {} models; use a Rust type's name: {}",
            found.len(),
            found
                .iter()
                .map(|m| m.type_name)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl Model {
    pub(crate) async fn get(&self, db: &Db, key: &str) -> Result<Value, Failure> {
        (self.get)(db, key).await
    }

    pub(crate) async fn warm(
        &self,
        db: &Db,
        limit: Option<u64>,
        bar: &indicatif::ProgressBar,
    ) -> Result<(u64, u64), Failure> {
        (self.warm)(db, limit, bar).await
    }

    pub(crate) fn name(&self) -> String {
        self.meta.qualified_name()
    }
}

/// A key typed on the command line: JSON (`42`, `"a b"`, `[1, "x"]`), or else the
/// text itself as a JSON string (a UUID, a name).
fn parse_key<M: Table>(text: &str) -> Result<M::Key, Failure> {
    serde_json::from_str::<M::Key>(text)
        .or_else(|_| serde_json::from_value::<M::Key>(Value::String(text.to_owned())))
        .map_err(|e| {
            Failure::refused(format!(
                "`{text}` is not a key of {} ({}): {e}",
                M::META.qualified_name(),
                M::META.key_column().sql_type
            ))
        })
}

async fn get<M: Table + serde::Serialize>(db: &Db, key: &str) -> Result<Value, Failure> {
    let key = parse_key::<M>(key)?;
    let CachedRow {
        entry,
        ttl,
        leased,
        scoped_copies,
        ..
    } = db.cache_entry::<M>(&key).await?;
    let (state, row) = match entry {
        CachedEntry::Row(row) => (
            "row",
            serde_json::to_value(&row).map_err(|e| Failure::setup(e.to_string()))?,
        ),
        CachedEntry::Absent => ("absent", Value::Null),
        CachedEntry::Missing => ("missing", Value::Null),
        CachedEntry::OtherShape => ("other-shape", Value::Null),
        _ => ("unknown", Value::Null),
    };
    Ok(json!({
        "table": M::META.qualified_name(),
        "key": key,
        "state": state,
        "ttl_ms": ttl.map(|t| t.as_millis() as u64),
        "leased": leased,
        "scoped_copies": scoped_copies,
        "row": row,
    }))
}

/// `"schema"."table"`.
fn quoted(meta: &TableMeta) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    match meta.schema {
        Some(schema) => format!("{}.{}", quote(schema), quote(meta.name)),
        None => quote(meta.name),
    }
}

/// Reads `M`'s rows into the row cache, a page of keys at a time in key order;
/// answers the rows read and the entries filled (rows already cached are not).
async fn warm<M: Table + Clone>(
    db: &Db,
    limit: Option<u64>,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, u64), Failure> {
    const PAGE: u64 = 500;
    if M::META.cache_ttl.is_none() {
        return Err(Failure::refused(format!(
            "{} declares no cache(ttl = ...): there is nothing to warm",
            M::META.qualified_name()
        )));
    }
    if db.cache().is_none() {
        return Err(Failure::setup(
            "no cache: pass --redis-url or set REDIS_URL (or .env)",
        ));
    }
    let table = quoted(M::META);
    let key = format!("\"{}\"", M::META.key_column().name.replace('"', "\"\""));
    let total: i64 = db
        .sql_rows(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(|e| Failure::setup(e.to_string()))?
        .unwrap_or(0);
    let total = u64::try_from(total).unwrap_or(0);
    bar.set_length(limit.map_or(total, |l| l.min(total)));
    let (mut read, mut filled) = (0u64, 0u64);
    let mut last: Option<M::Key> = None;
    loop {
        let page = limit.map_or(PAGE, |l| PAGE.min(l - read));
        if page == 0 {
            break;
        }
        let rows = match &last {
            None => {
                let sql = format!("SELECT {key} FROM {table} ORDER BY {key} LIMIT {page}");
                db.sql_rows(&sql, &[]).await?
            }
            Some(after) => {
                let sql = format!(
                    "SELECT {key} FROM {table} WHERE {key} > $1 ORDER BY {key} LIMIT {page}"
                );
                db.sql_rows(&sql, &[after]).await?
            }
        };
        let keys: Vec<M::Key> = rows
            .iter()
            .map(|r| r.try_get::<_, M::Key>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::setup(e.to_string()))?;
        let Some(next) = keys.last().cloned() else {
            break;
        };
        filled += db.warm::<M>(&keys).await?;
        read += keys.len() as u64;
        bar.inc(keys.len() as u64);
        last = Some(next);
        if (keys.len() as u64) < page {
            break;
        }
    }
    Ok((read, filled))
}
