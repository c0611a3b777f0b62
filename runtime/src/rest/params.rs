//! PostgREST's query-string dialect, read into a [`Read`]: `select`, filters
//! (`col=op.value`, `not.`, `or=(…)`, `and=(…)`, nested), `order`, `limit`, `offset`.
//! Nothing here knows a model: names and values are checked against one later (see
//! `mod.rs`), and the parse of nested logic is bounded by [`MAX_FILTER_DEPTH`].

use serde_json::Value;

use super::{Cond, Embed, Read, RestError};
use crate::query::MAX_FILTER_DEPTH;
use crate::query::spec::OrderKeySpec;

/// The longest query string read (bytes); PostgREST clients send far less.
pub(super) const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Decodes `%xx` escapes and `+` (as a space, as forms send it).
fn decode(s: &str) -> Result<String, RestError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| RestError::parse("malformed percent-escape in the query"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RestError::parse("the query string is not UTF-8"))
}

/// Reads a request's query string.
pub(super) fn parse_query(query: &str) -> Result<Read, RestError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(RestError::parse("the query string is too long"));
    }
    let mut read = Read::default();
    let mut conditions = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode(key)?, decode(value)?);
        match key.as_str() {
            "select" => {
                let (columns, embeds) = parse_select(&value, 0)?;
                // Only embeds (`select=experiences(*)`): no column of the table itself.
                read.select = Some(columns);
                read.embeds = embeds;
            }
            "order" => read.order = parse_order(&value)?,
            "limit" => read.limit = Some(count("limit", &value)?),
            "offset" => read.offset = Some(count("offset", &value)?),
            // Parameters of writes, read by the router.
            "on_conflict" | "columns" => {}
            "or" | "and" | "not.or" | "not.and" => {
                let negated = key.starts_with("not.");
                let op = key.trim_start_matches("not.");
                let inner = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| {
                        RestError::parse(format!("`{key}` takes a list in parentheses: {key}=(…)"))
                    })?;
                let group = logic(op, inner, 1)?;
                conditions.push(if negated {
                    Cond::Not(Box::new(group))
                } else {
                    group
                });
            }
            column => conditions.push(leaf(column, &value, false)?),
        }
    }
    read.filter = match conditions.len() {
        0 => None,
        1 => conditions.pop(),
        _ => Some(Cond::And(conditions)),
    };
    Ok(read)
}

fn count(what: &str, value: &str) -> Result<u64, RestError> {
    value
        .parse()
        .map_err(|_| RestError::parse(format!("`{what}` must be a whole number")))
}

/// How deep embedded resources may nest (`a(b(c(d)))`).
pub(super) const MAX_EMBED_DEPTH: usize = 4;

/// `id,username,experiences(content,created_at),*`: the columns, and the embedded
/// resources with their own lists. Aliases, casts and join hints are refused.
fn parse_select(value: &str, depth: usize) -> Result<(Vec<String>, Vec<Embed>), RestError> {
    if depth > MAX_EMBED_DEPTH {
        return Err(RestError::parse(format!(
            "embedded resources nest deeper than {MAX_EMBED_DEPTH} levels"
        )));
    }
    let (mut columns, mut embeds) = (Vec::new(), Vec::new());
    for part in split_top(value)? {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if let Some(open) = part.find('(') {
            let name = part[..open].trim();
            let inner = part[open + 1..].strip_suffix(')').ok_or_else(|| {
                RestError::parse(format!("`{part}`: an embedded resource is name(columns)"))
            })?;
            if name.is_empty() || name.contains([':', '!', '.']) {
                return Err(RestError::unsupported(format!(
                    "aliases and hints on embedded resources (`{name}`) are not supported"
                )));
            }
            let (select, nested) = parse_select(inner, depth + 1)?;
            embeds.push(Embed {
                name: name.to_owned(),
                select: (!select.is_empty()).then_some(select),
                embeds: nested,
            });
            continue;
        }
        if part.contains(':') {
            return Err(RestError::unsupported(format!(
                "aliases and casts in `select` (`{part}`) are not supported"
            )));
        }
        columns.push(part.to_owned());
    }
    Ok((columns, embeds))
}

/// `created_at.desc.nullslast,id`.
fn parse_order(value: &str) -> Result<Vec<OrderKeySpec>, RestError> {
    value
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let mut bits = part.trim().split('.');
            let column = bits.next().unwrap_or_default().to_owned();
            let (mut direction, mut nulls) = (None, None);
            for bit in bits {
                match bit {
                    "asc" | "desc" => direction = Some(bit.to_owned()),
                    "nullsfirst" => nulls = Some("first".to_owned()),
                    "nullslast" => nulls = Some("last".to_owned()),
                    other => {
                        return Err(RestError::parse(format!(
                            "unknown order modifier `{other}` for `{column}`"
                        )));
                    }
                }
            }
            Ok(OrderKeySpec {
                column,
                direction,
                nulls,
            })
        })
        .collect()
}

/// Splits on commas outside parentheses and double quotes.
fn split_top(s: &str) -> Result<Vec<&str>, RestError> {
    let (mut parts, mut depth, mut quoted, mut escaped, mut start) =
        (Vec::new(), 0usize, false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| RestError::parse("unbalanced parentheses"))?;
            }
            ',' if !quoted && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err(RestError::parse("unbalanced parentheses or quotes"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// `and` / `or` of the comma-separated conditions in `inner`.
fn logic(op: &str, inner: &str, depth: usize) -> Result<Cond, RestError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(RestError::parse(format!(
            "logic nested deeper than {MAX_FILTER_DEPTH} levels"
        )));
    }
    let mut items = Vec::new();
    for item in split_top(inner)? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (negated, rest) = match item.strip_prefix("not.") {
            Some(rest) if rest.starts_with("and(") || rest.starts_with("or(") => (true, rest),
            _ => (false, item),
        };
        let group = ["and", "or"].into_iter().find_map(|word| {
            rest.strip_prefix(word)
                .and_then(|r| r.strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'))
                .map(|r| (word, r))
        });
        let cond = match group {
            Some((word, body)) => logic(word, body, depth + 1)?,
            None => {
                // `column.op.value` (or `column.not.op.value`).
                let (column, condition) = rest.split_once('.').ok_or_else(|| {
                    RestError::parse(format!("`{rest}` is not a condition (column.op.value)"))
                })?;
                leaf(column, condition, true)?
            }
        };
        items.push(if negated {
            Cond::Not(Box::new(cond))
        } else {
            cond
        });
    }
    if items.is_empty() {
        return Err(RestError::parse(format!("`{op}` has no conditions")));
    }
    Ok(match op {
        "and" => Cond::And(items),
        _ => Cond::Or(items),
    })
}

/// One column's condition: `op.value` or `not.op.value`. A value may be double-quoted
/// inside `or=(…)`/`and=(…)` (`quoted`), where commas and parentheses are syntax; a
/// top-level value is taken verbatim, as PostgREST does. Items of an `in` list may be
/// quoted anywhere.
fn leaf(column: &str, condition: &str, quoted: bool) -> Result<Cond, RestError> {
    let (negated, condition) = match condition.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, condition),
    };
    let (op, raw) = condition.split_once('.').ok_or_else(|| {
        RestError::parse(format!(
            "`{column}={condition}`: a filter is `operator.value` (eq.5, in.(1,2), is.null)"
        ))
    })?;
    let text = |raw: &str| match quoted {
        true => unquote(raw),
        false => raw.to_owned(),
    };
    let item = |raw: &str| Value::String(unquote(raw));
    let (op, value) = match op {
        "eq" | "gt" | "gte" | "lt" | "lte" => (op, Value::String(text(raw))),
        "neq" => ("ne", Value::String(text(raw))),
        // PostgREST's `*` is SQL's `%` (a literal `%` still works).
        "like" | "ilike" => (op, Value::String(text(raw).replace('*', "%"))),
        "in" => {
            let inner = raw
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| {
                    RestError::parse(format!("`in` on `{column}` takes a list: in.(a,b)"))
                })?;
            let items = match inner.is_empty() {
                true => Vec::new(),
                false => split_top(inner)?.into_iter().map(item).collect(),
            };
            ("in", Value::Array(items))
        }
        "is" => match raw {
            "null" => ("is_null", Value::Null),
            "true" | "false" => {
                // `IS TRUE`: false for NULL, so its negation keeps NULL rows (an
                // `= true` would make both sides drop them).
                let cond = Cond::And(vec![
                    Cond::Leaf {
                        column: column.to_owned(),
                        op: "not_null".into(),
                        value: Value::Null,
                    },
                    Cond::Leaf {
                        column: column.to_owned(),
                        op: "eq".into(),
                        value: Value::Bool(raw == "true"),
                    },
                ]);
                return Ok(if negated {
                    Cond::Not(Box::new(cond))
                } else {
                    cond
                });
            }
            other => {
                return Err(RestError::parse(format!(
                    "`is` takes null, true or false, not `{other}`"
                )));
            }
        },
        "cs" => ("contains", Value::String(text(raw))),
        other => {
            return Err(RestError::unsupported(format!(
                "operator `{other}` (on `{column}`) is not supported"
            )));
        }
    };
    let cond = Cond::Leaf {
        column: column.to_owned(),
        op: op.to_owned(),
        value,
    };
    Ok(if negated {
        Cond::Not(Box::new(cond))
    } else {
        cond
    })
}

/// A value as written: `"a,b"` in double quotes (with `\"` and `\\`) or bare.
fn unquote(raw: &str) -> String {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(column: &str, op: &str, value: Value) -> Cond {
        Cond::Leaf {
            column: column.into(),
            op: op.into(),
            value,
        }
    }

    #[test]
    fn reads_filters_logic_order_and_paging() {
        let read = parse_query(
            "select=id,username&status=eq.active&age=not.gte.18&name=in.(ann,%22b,c%22)\
             &or=(id.eq.1,and(id.gt.5,username.like.a*))&order=created_at.desc.nullslast,id&limit=10&offset=20",
        )
        .expect("parse");
        assert_eq!(read.select, Some(vec!["id".into(), "username".into()]));
        assert_eq!((read.limit, read.offset), (Some(10), Some(20)));
        assert_eq!(read.order.len(), 2);
        assert_eq!(read.order[0].nulls.as_deref(), Some("last"));
        let Some(Cond::And(all)) = read.filter else {
            panic!("an AND of the conditions");
        };
        assert_eq!(all[0], leaf("status", "eq", Value::String("active".into())));
        assert_eq!(
            all[1],
            Cond::Not(Box::new(leaf("age", "gte", Value::String("18".into()))))
        );
        assert_eq!(
            all[2],
            leaf(
                "name",
                "in",
                Value::Array(vec![
                    Value::String("ann".into()),
                    Value::String("b,c".into())
                ])
            )
        );
        assert_eq!(
            all[3],
            Cond::Or(vec![
                leaf("id", "eq", Value::String("1".into())),
                Cond::And(vec![
                    leaf("id", "gt", Value::String("5".into())),
                    leaf("username", "like", Value::String("a%".into())),
                ]),
            ])
        );
    }

    #[test]
    fn refuses_malformed_and_too_deep_input_without_recursing_without_bound() {
        for bad in [
            "id=eq",
            "id=zz.1",
            "or=id.eq.1",
            "or=(id.eq.1",
            "or=()",
            "order=id.sideways",
            "limit=-1",
            "name=in.ann",
            "id=is.maybe",
            "select=a(b",
            "select=x:a(b)",
            "select=a(b(c(d(e(f)))))",
            "x=%zz",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        let deep = format!("or=({}id.eq.1{})", "and(".repeat(100), ")".repeat(100));
        assert!(parse_query(&deep).is_err());
        let deep = format!(
            "or=({}id.eq.1{})",
            "and(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(parse_query(&deep).is_err());
    }
}
