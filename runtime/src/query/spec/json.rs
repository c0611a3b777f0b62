//! Rows out as JSON objects (by the column types PostgreSQL reports), and
//! [`Db::query_spec`].

use super::validate::column;
use super::*;

/// Decodes any row into a JSON object by the column types PostgreSQL reports.
#[doc(hidden)]
pub struct JsonRow;

impl<M: Table> Decode<M> for JsonRow {
    type Output = Map<String, Value>;

    fn decode(row: &Row) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (i, column) in row.columns().iter().enumerate() {
            if column.name().starts_with(KEY_PREFIX) {
                continue;
            }
            let value = json_value(row, i, column.type_()).map_err(|e| Error::Decode {
                table: M::META.name,
                column: M::META.column(column.name()).map_or("?", |(_, c)| c.name),
                source: Box::new(e),
            })?;
            out.insert(column.name().to_owned(), value);
        }
        Ok(out)
    }

    fn encode_rows(rows: &[Map<String, Value>]) -> Option<Vec<u8>> {
        // JSON objects are this decoder's own output: no user serde is involved.
        serde_json::to_vec(rows).ok()
    }

    fn decode_rows(bytes: &[u8]) -> Option<Vec<Map<String, Value>>> {
        serde_json::from_slice(bytes).ok()
    }

    const JSON_COLUMNS: bool = true;
}

/// Whether [`json_value`] decodes a column of this type itself; others are selected as
/// `to_jsonb(column)` (PostgreSQL's own JSON of the value: a number for `numeric`, an
/// array for an array, a string for `timestamp`, `time`, `inet`, an enum, …).
pub(crate) fn json_native(sql_type: &str) -> bool {
    matches!(
        sql_type,
        "bool"
            | "int2"
            | "int4"
            | "int8"
            | "float4"
            | "float8"
            | "text"
            | "varchar"
            | "bytea"
            | "json"
            | "jsonb"
    ) || (sql_type == "uuid" && cfg!(feature = "uuid"))
        || (matches!(sql_type, "timestamptz" | "date") && cfg!(feature = "chrono"))
}

pub(super) fn json_value(
    row: &Row,
    i: usize,
    ty: &Type,
) -> std::result::Result<Value, tokio_postgres::Error> {
    fn num<T: Into<serde_json::Number>>(v: Option<T>) -> Value {
        v.map_or(Value::Null, |n| Value::Number(n.into()))
    }
    fn float(v: Option<f64>) -> Value {
        match v {
            Some(f) => serde_json::Number::from_f64(f)
                .map_or_else(|| Value::String(f.to_string()), Value::Number),
            None => Value::Null,
        }
    }
    Ok(match *ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map_or(Value::Null, Value::Bool),
        Type::INT2 => num(row.try_get::<_, Option<i16>>(i)?),
        Type::INT4 => num(row.try_get::<_, Option<i32>>(i)?),
        Type::INT8 => num(row.try_get::<_, Option<i64>>(i)?),
        Type::FLOAT4 => float(row.try_get::<_, Option<f32>>(i)?.map(f64::from)),
        Type::FLOAT8 => float(row.try_get::<_, Option<f64>>(i)?),
        #[cfg(feature = "uuid")]
        Type::UUID => row
            .try_get::<_, Option<uuid::Uuid>>(i)?
            .map_or(Value::Null, |u| Value::String(u.to_string())),
        #[cfg(feature = "chrono")]
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
            .map_or(Value::Null, |t| Value::String(t.to_rfc3339())),
        #[cfg(feature = "chrono")]
        Type::DATE => row
            .try_get::<_, Option<chrono::NaiveDate>>(i)?
            .map_or(Value::Null, |d| Value::String(d.to_string())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Value::Null, |b| {
                Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
            }),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<Json<Value>>>(i)?
            .map_or(Value::Null, |json| json.0),
        _ => row
            .try_get::<_, Option<String>>(i)?
            .map_or(Value::Null, Value::String),
    })
}

impl Db {
    /// Runs a [`QuerySpec`] from untrusted input on model `M` and returns the selected
    /// columns of each row as a JSON object, with the cursor of the next page (unless
    /// the spec pages by `offset`).
    ///
    /// ```no_run
    /// # use tabula::{Db, Table, query::{QuerySpec, SpecLimits}};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db) -> tabula::Result<()> {
    /// let spec = QuerySpec::from_query_string("select=id&body=like.%25rust%25&limit=20")?;
    /// let page = db.query_spec::<Note>(&spec, &SpecLimits::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_spec<M: Table>(
        &self,
        spec: &QuerySpec,
        limits: &SpecLimits,
    ) -> Result<SpecPage> {
        let meta = M::META;
        let columns = match &spec.select {
            None => None,
            Some(select) => {
                let names: Vec<String> = match select {
                    SelectSpec::List(list) => list.split(',').map(str::to_owned).collect(),
                    SelectSpec::Columns(list) => list.clone(),
                };
                let names: Vec<&str> = names
                    .iter()
                    .map(|n| n.trim())
                    .filter(|n| !n.is_empty() && *n != "*")
                    .collect();
                if names.len() > meta.columns.len() * 2 {
                    return Err(invalid("too many selected columns".into()));
                }
                let indices = names
                    .iter()
                    .map(|n| column(meta, n, "the select list").map(|(i, _)| i))
                    .collect::<Result<Vec<_>>>()?;
                (!indices.is_empty()).then_some(indices)
            }
        };
        let query = as_json(self.query::<M>().apply(spec, limits)?, columns);
        if spec.offset.is_some() {
            if spec.cursor.is_some() {
                return Err(invalid("use either `offset` or `cursor`, not both".into()));
            }
            return Ok(SpecPage {
                rows: query.all().await?,
                next: None,
            });
        }
        let size = query.limit.unwrap_or(limits.default_limit);
        let page = query.page(size, spec.cursor.as_ref()).await?;
        Ok(SpecPage {
            rows: page.items,
            next: page.next,
        })
    }
}
