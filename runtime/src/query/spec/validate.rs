//! A [`QuerySpec`] checked against the model's metadata, and turned into filters
//! and order keys — nothing reaches SQL that did not pass here.

use super::*;

pub(crate) fn column<'m>(
    meta: &'m TableMeta,
    name: &str,
    part: &str,
) -> Result<(usize, &'m ColumnMeta)> {
    meta.column(name.trim()).ok_or_else(|| {
        invalid(format!(
            "unknown column `{}` in {part} of a query on `{}`",
            name.escape_debug(),
            meta.name
        ))
    })
}

/// Parses a JSON value as the column's type; strings are accepted for every type, as
/// query strings only have strings.
pub(super) fn parse_value(
    meta: &TableMeta,
    column: &ColumnMeta,
    value: &Value,
    limits: &SpecLimits,
) -> Result<OwnedParam> {
    let bad = || {
        invalid(format!(
            "value {} does not parse as column `{}` of `{}` ({})",
            truncate(value),
            column.name,
            meta.name,
            column.sql_type
        ))
    };
    // First, before anything walks the value by recursion (printing, cloning, binding).
    check_json_depth(column, value)?;
    if let Value::String(s) = value
        && s.len() > limits.max_value_bytes
    {
        return Err(invalid(format!(
            "value for column `{}` is longer than {} bytes",
            column.name, limits.max_value_bytes
        )));
    }
    if contains_nul(value) {
        return Err(invalid(format!(
            "value for column `{}` contains a NUL character, which PostgreSQL text cannot hold",
            column.name
        )));
    }
    let text = value.as_str();
    let int = || {
        value
            .as_i64()
            .or_else(|| text.and_then(|t| t.trim().parse().ok()))
    };
    // As `float4in` / `float8in` read it: out of range is refused, never rounded to
    // infinity or zero (see `page::float_is_valid`).
    let float = |single: bool| {
        let parse = |t: &str| match single {
            true => t.parse::<f32>().ok().map(f64::from),
            false => t.parse::<f64>().ok(),
        };
        match text {
            Some(t) => Some(t.trim())
                .filter(|t| crate::query::page::float_is_valid(t, parse))
                .and_then(parse),
            // A JSON number is the double the JSON parser read (`1e-400` arrived as
            // 0: send such a value as a string to have PostgreSQL read it). For
            // `float4`, the double's shortest decimal form is read as PostgreSQL would
            // read that text, not the double rounded again.
            None => value.as_f64().and_then(|v| match single {
                false => Some(v),
                true => Some(v.to_string())
                    .filter(|t| crate::query::page::float_is_valid(t, parse))
                    .and_then(|t| parse(&t)),
            }),
        }
    };
    let param: OwnedParam = match column.sql_type {
        "bool" => Arc::new(
            value
                .as_bool()
                .or_else(|| text.and_then(|t| t.parse().ok()))
                .ok_or_else(bad)?,
        ),
        "int2" => Arc::new(int().and_then(|v| i16::try_from(v).ok()).ok_or_else(bad)?),
        "int4" => Arc::new(int().and_then(|v| i32::try_from(v).ok()).ok_or_else(bad)?),
        "int8" => Arc::new(int().ok_or_else(bad)?),
        "float4" => Arc::new(float(true).ok_or_else(bad)? as f32),
        "float8" => Arc::new(float(false).ok_or_else(bad)?),
        "text" => Arc::new(text.ok_or_else(bad)?.to_owned()),
        #[cfg(feature = "uuid")]
        "uuid" => Arc::new(
            text.and_then(|t| uuid::Uuid::parse_str(t.trim()).ok())
                .ok_or_else(bad)?,
        ),
        #[cfg(feature = "chrono")]
        "timestamptz" => Arc::new(
            text.and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok_or_else(bad)?,
        ),
        #[cfg(feature = "chrono")]
        "date" => Arc::new(
            text.and_then(|t| chrono::NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d").ok())
                .ok_or_else(bad)?,
        ),
        // `#[table(json)]` fields too, in every build: bound through serde_json.
        "jsonb" => match text {
            // From a query string: the text is the JSON document.
            Some(t) => {
                let parsed = serde_json::from_str::<Value>(t).map_err(|_| bad())?;
                check_json_depth(column, &parsed)?;
                Arc::new(Json(parsed))
            }
            None => Arc::new(Json(value.clone())),
        },
        _ => {
            return Err(invalid(format!(
                "column `{}` of `{}` ({}) cannot be filtered on",
                column.name, meta.name, column.sql_type
            )));
        }
    };
    Ok(param)
}

/// Refuses a JSON value nested deeper than [`MAX_FILTER_DEPTH`], measured with an
/// explicit stack: a value built in memory (not parsed from text, where serde_json
/// stops at 128) can be nested without bound.
pub(super) fn check_json_depth(column: &ColumnMeta, value: &Value) -> Result<()> {
    let mut stack = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        if depth > MAX_FILTER_DEPTH {
            return Err(invalid(format!(
                "value for column `{}` nests deeper than {MAX_FILTER_DEPTH} levels",
                column.name
            )));
        }
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn contains_nul(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

pub(super) fn truncate(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

pub(crate) fn filter_node(
    meta: &TableMeta,
    spec: &FilterSpec,
    limits: &SpecLimits,
) -> Result<Node> {
    let (index, col) = column(meta, &spec.column, "a filter")?;
    let value = || {
        spec.value.as_ref().filter(|v| !v.is_null()).ok_or_else(|| {
            invalid(format!(
                "filter `{}` on column `{}` needs a value (use `is_null` to match NULL)",
                spec.op, col.name
            ))
        })
    };
    let compare = |op: Op| -> Result<Node> {
        Ok(Node::Compare(
            index,
            op,
            parse_value(meta, col, value()?, limits)?,
        ))
    };
    match spec.op.as_str() {
        "eq" => compare(Op::Eq),
        "ne" | "neq" => compare(Op::Ne),
        "lt" => compare(Op::Lt),
        "lte" | "le" => compare(Op::Le),
        "gt" => compare(Op::Gt),
        "gte" | "ge" => compare(Op::Ge),
        "like" | "ilike" => {
            if col.sql_type != "text" {
                return Err(invalid(format!(
                    "`{}` needs a text column; `{}` is {}",
                    spec.op, col.name, col.sql_type
                )));
            }
            compare(if spec.op == "like" {
                Op::Like
            } else {
                Op::ILike
            })
        }
        "contains" => {
            if col.sql_type != "jsonb" {
                return Err(invalid(format!(
                    "`contains` needs a JSON column; `{}` is {}",
                    col.name, col.sql_type
                )));
            }
            compare(Op::Contains)
        }
        "in" | "not_in" => {
            let Some(Value::Array(items)) = &spec.value else {
                return Err(invalid(format!(
                    "`{}` on column `{}` needs a list of values",
                    spec.op, col.name
                )));
            };
            if items.len() > limits.max_list {
                return Err(invalid(format!(
                    "`{}` list on `{}` has more than {} values",
                    spec.op, col.name, limits.max_list
                )));
            }
            let values = items
                .iter()
                .map(|v| parse_value(meta, col, v, limits))
                .collect::<Result<Vec<_>>>()?;
            // One array parameter, whatever the length (see `Column::is_in`).
            Ok(Node::In(
                index,
                crate::sql::ParamList::from_params(values),
                spec.op == "in",
            ))
        }
        "is_null" => Ok(Node::IsNull(index, true)),
        "not_null" => Ok(Node::IsNull(index, false)),
        other => Err(invalid(crate::error::unknown_word(
            "filter operator",
            other,
            OPS,
        ))),
    }
}

pub(crate) fn order_key<M>(
    meta: &TableMeta,
    column_name: &str,
    direction: Option<&str>,
    nulls: Option<&str>,
) -> Result<OrderBy<M>> {
    let (index, _) = column(meta, column_name, "the order")?;
    let descending = match direction.map(str::trim).unwrap_or("asc") {
        "asc" | "" => false,
        "desc" => true,
        other => {
            return Err(invalid(crate::error::unknown_word(
                "order direction",
                other,
                &["asc", "desc"],
            )));
        }
    };
    let key = OrderBy::new(index, descending);
    Ok(match nulls.map(str::trim) {
        None | Some("") => key,
        Some("first") => key.nulls_first(),
        Some("last") => key.nulls_last(),
        Some(other) => {
            return Err(invalid(crate::error::unknown_word(
                "nulls placement",
                other,
                &["first", "last"],
            )));
        }
    })
}

impl<M: Table, D: Decode<M>> Query<M, D> {
    /// Adds the filters, order, limit and offset of `spec` (its `select` and `cursor`
    /// are for [`Db::query_spec`]), after checking them against the model.
    ///
    /// ```no_run
    /// # use tabula::{Db, Table, query::{QuerySpec, SpecLimits}};
    /// # #[derive(Table)] pub struct Note { #[table(primary_key)] pub id: i64, pub body: String }
    /// # async fn run(db: Db, spec: QuerySpec) -> tabula::Result<()> {
    /// let notes: Vec<Note> = db.query::<Note>().apply(&spec, &SpecLimits::default())?.all().await?;
    /// # Ok(()) }
    /// ```
    pub fn apply(mut self, spec: &QuerySpec, limits: &SpecLimits) -> Result<Self> {
        let meta = M::META;
        if spec.eq.len() + spec.filters.len() > limits.max_filters {
            return Err(invalid(format!("more than {} filters", limits.max_filters)));
        }
        for (name, value) in &spec.eq {
            let as_filter = FilterSpec {
                column: name.clone(),
                op: "eq".into(),
                value: Some(value.clone()),
            };
            self.filters.push(filter_node(meta, &as_filter, limits)?);
        }
        for filter in &spec.filters {
            self.filters.push(filter_node(meta, filter, limits)?);
        }
        let keys: Vec<OrderBy<M>> = match &spec.order {
            Some(OrderSpec::Map(map)) => map
                .iter()
                .map(|(name, direction)| order_key(meta, name, Some(direction), None))
                .collect::<Result<_>>()?,
            Some(OrderSpec::Keys(keys)) => keys
                .iter()
                .map(|key| {
                    order_key(
                        meta,
                        &key.column,
                        key.direction.as_deref(),
                        key.nulls.as_deref(),
                    )
                })
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        // A second key on the same column never changes the order; refusing it bounds
        // the keys (and the keyset condition, quadratic in them) by the model's columns.
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.column == key.column) {
                return Err(invalid(format!(
                    "column `{}` appears twice in the order",
                    meta.columns[key.column].name
                )));
            }
        }
        self.order.extend(keys);
        let limit = spec.limit.unwrap_or(limits.default_limit);
        if limit > limits.max_limit {
            return Err(invalid(format!(
                "limit {limit} is over the maximum of {}",
                limits.max_limit
            )));
        }
        self.limit = Some(limit);
        self.offset = spec.offset;
        Ok(self)
    }
}
