//! The query-string form of a [`QuerySpec`].

use super::*;

impl QuerySpec {
    /// Reads a query string:
    /// `select=id,username&status=eq.active&age=gte.18&name=in.(ann,bob)&avatar_url=is_null&order=created_at.desc,id.asc&limit=10&offset=20&cursor=…`.
    /// Every key other than `select`, `order`, `limit`, `offset`, `cursor` is a column
    /// with `op.value`. Values are percent-decoded.
    ///
    /// ```
    /// let spec = tabula::query::QuerySpec::from_query_string("status=eq.active&limit=5")?;
    /// assert_eq!(spec.limit, Some(5));
    /// assert_eq!(spec.filters[0].op, "eq");
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn from_query_string(query: &str) -> Result<QuerySpec> {
        let mut spec = QuerySpec::default();
        for pair in query
            .trim_start_matches('?')
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (percent_decode(key)?, percent_decode(value)?);
            match key.as_str() {
                "select" => spec.select = Some(SelectSpec::List(value)),
                "limit" => spec.limit = Some(parse_count("limit", &value)?),
                "offset" => spec.offset = Some(parse_count("offset", &value)?),
                "cursor" => spec.cursor = Some(Cursor::new(value)),
                "order" => {
                    let keys = value
                        .split(',')
                        .map(|part| {
                            let mut bits = part.trim().split('.');
                            let column = bits.next().unwrap_or_default().to_owned();
                            let direction = bits.next().map(str::to_owned);
                            let nulls = bits
                                .next()
                                .map(|n| n.trim_start_matches("nulls").to_owned());
                            OrderKeySpec {
                                column,
                                direction,
                                nulls,
                            }
                        })
                        .collect();
                    spec.order = Some(OrderSpec::Keys(keys));
                }
                column => {
                    let (op, raw) = value.split_once('.').unwrap_or((value.as_str(), ""));
                    let value = match op {
                        "is_null" | "not_null" => None,
                        "in" | "not_in" => {
                            let inner = raw.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
                                invalid(format!("filter on `{column}`: `{op}` takes a list like `{op}.(a,b)`"))
                            })?;
                            let items = if inner.is_empty() {
                                Vec::new()
                            } else {
                                inner
                                    .split(',')
                                    .map(|s| Value::String(s.to_owned()))
                                    .collect()
                            };
                            Some(Value::Array(items))
                        }
                        _ => Some(Value::String(raw.to_owned())),
                    };
                    spec.filters.push(FilterSpec {
                        column: column.to_owned(),
                        op: op.to_owned(),
                        value,
                    });
                }
            }
        }
        Ok(spec)
    }
}

pub(super) fn parse_count(what: &str, value: &str) -> Result<u64> {
    value.parse().map_err(|_| {
        invalid(format!(
            "`{what}` must be a whole number, not `{}`",
            value.escape_debug()
        ))
    })
}

pub(super) fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly: `from_str_radix` alone would take `%+1`.
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| {
                    invalid("malformed percent-escape in the query string".into())
                })?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid("the query string is not UTF-8".into()))
}
