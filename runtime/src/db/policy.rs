//! Which user-scoped reads may use the cache, and under which versions (see
//! [`crate::auth`], "The cache under RLS").
//!
//! A scope's copy of a row stays right while nothing its visibility depends on
//! changes: the row itself (every write drops every scope's copies of it), the role and
//! the claims (the copy's name holds a hash of both), and whatever the table's `SELECT`
//! policies read besides the row. That last part is read from the catalog, from the
//! policies' stored expression trees, once per table:
//!
//! - a table a policy reads (a subquery) — its version counter becomes part of the
//!   copy's name, so any write to it makes every scope's copies miss; its own
//!   policies are followed the same way;
//! - a function: `IMMUTABLE` ones depend on their arguments only; of the others, only
//!   those that read the role or the settings (`current_setting`, `current_user`, …)
//!   and the functions named in [`CacheConfig::policy_functions`](crate::CacheConfig)
//!   (by default `auth.uid`, `auth.role` and `auth.jwt`, which read the claims) are
//!   allowed;
//! - anything else — the clock (`now()`, `CURRENT_TIMESTAMP`), another `STABLE` or
//!   `VOLATILE` function, a view, a materialized view or a foreign table — makes the
//!   table's scoped reads bypass the cache, as before: what they depend on cannot be
//!   versioned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Db;
use crate::auth::Scope;
use crate::cache::backend::Scoped;

/// Relations by oid, with their `SELECT` policies' expression trees.
const RELATIONS: &str = "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, \
     coalesce((SELECT array_agg(p.polqual::text) FROM pg_policy p \
               WHERE p.polrelid = c.oid AND p.polcmd IN ('r', '*') AND p.polqual IS NOT NULL), \
              '{}'::text[]) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid::int8 = ANY($1)";

const TABLE_OID: &str = "SELECT to_regclass($1)::oid::int8";

const FUNCTIONS: &str = "SELECT n.nspname::text, p.proname::text, p.provolatile::text \
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.oid::int8 = ANY($1)";

const OPERATORS: &str = "SELECT oprcode::oid::int8 FROM pg_operator WHERE oid::int8 = ANY($1)";

/// `pg_catalog` functions whose result depends on the role or the settings only — both
/// fixed for a scope (the settings a scoped transaction makes are its role and claims).
const SESSION_FUNCTIONS: &[&str] = &[
    "current_setting",
    "current_user",
    "session_user",
    "current_role",
    "user",
    "current_schema",
    "current_schemas",
    "current_database",
];

/// The most tables followed through policies before giving up (and not caching).
const MAX_TABLES: usize = 64;

/// What an expression tree refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct References {
    pub(crate) functions: Vec<i64>,
    pub(crate) operators: Vec<i64>,
    pub(crate) relations: Vec<i64>,
    /// A `CURRENT_DATE`/`CURRENT_TIMESTAMP`/`LOCALTIME`… (an `SQLValueFunction` of the
    /// clock: its operations 0–8 in every PostgreSQL that has the node).
    pub(crate) clock: bool,
}

/// The oids an expression tree (`pg_node_tree` as text) names: functions
/// (`:funcid`, `:opfuncid`, `:aggfnoid`, `:winfnoid`), operators (`:opno`, `:opnos`),
/// relations (`:relid`), and the clock.
pub(crate) fn references(tree: &str) -> References {
    let mut found = References::default();
    let number = |rest: &str| -> Option<i64> {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    for (at, _) in tree.match_indices(':') {
        let rest = &tree[at + 1..];
        let field: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = rest[field.len()..].trim_start();
        match field.as_str() {
            "funcid" | "opfuncid" | "aggfnoid" | "winfnoid" => {
                found.functions.extend(number(after).filter(|n| *n != 0));
            }
            "opno" => found.operators.extend(number(after).filter(|n| *n != 0)),
            "opnos" => {
                // `(o 96 97)`: a row comparison's operators.
                let list = after.trim_start_matches('(').trim_start_matches('o');
                let end = list.find(')').unwrap_or(list.len());
                found.operators.extend(
                    list[..end]
                        .split_whitespace()
                        .filter_map(|n| n.parse::<i64>().ok()),
                );
            }
            "relid" => found.relations.extend(number(after).filter(|n| *n != 0)),
            "op" if tree[..at].ends_with("SQLVALUEFUNCTION ")
                && number(after).is_some_and(|op| op <= 8) =>
            {
                found.clock = true;
            }
            _ => {}
        }
    }
    found
}

/// `schema.name` as cascades and [`TableMeta::qualified_name`](crate::TableMeta) spell
/// it: tables in `public` without their schema.
fn counter_of(schema: &str, name: &str) -> String {
    match schema {
        "public" => format!("v:{name}"),
        schema => format!("v:{schema}.{name}"),
    }
}

impl Db {
    /// Whose copies of `meta`'s rows this scoped handle reads through the cache: its
    /// scope's, versioned by the tables its policies read — or `None` when they may
    /// not be cached (see the module docs).
    pub(crate) async fn scoped_entries(
        &self,
        scope: &Scope,
        meta: &'static crate::TableMeta,
    ) -> Option<Scoped> {
        let counters = self.policy_plan(meta).await?;
        Some(Scoped {
            id: scope.cache_id(),
            counters,
        })
    }

    /// The version counters a scoped copy of `meta`'s rows depends on, read once per
    /// table (again after DDL through the handle); `None`: not cacheable (or the
    /// catalog could not be read, this time).
    async fn policy_plan(&self, meta: &'static crate::TableMeta) -> Option<Arc<[String]>> {
        let id = std::ptr::from_ref(meta) as usize;
        if let Some(known) = super::cached::per_table(&self.shared.policy_plans, id) {
            return known;
        }
        let trusted: Vec<String> = self
            .shared
            .cache
            .as_ref()
            .map(|c| c.config().policy_functions.clone())
            .unwrap_or_default();
        // The catalog as the application's own role reads it, not the scope's.
        let owner = Db {
            shared: self.shared.clone(),
            tx: None,
            scope: None,
        };
        let name = super::cached::regclass_text(meta);
        let plan = owner
            .run("policies", meta.name, async move |conn| {
                let Some(oid) = conn
                    .query_opt(TABLE_OID, &[&name])
                    .await?
                    .and_then(|row| row.get::<_, Option<i64>>(0))
                else {
                    return Ok(Err("the table is not in the catalog".to_owned()));
                };
                let mut seen: HashSet<i64> = HashSet::new();
                let mut names: HashMap<i64, String> = HashMap::new();
                let mut read: HashSet<i64> = HashSet::new();
                let mut frontier = vec![oid];
                while !frontier.is_empty() {
                    if seen.len() > MAX_TABLES {
                        return Ok(Err(format!("policies read more than {MAX_TABLES} tables")));
                    }
                    seen.extend(frontier.iter().copied());
                    let rows = conn.query(RELATIONS, &[&frontier]).await?;
                    let mut functions = Vec::new();
                    let mut operators = Vec::new();
                    let mut next = Vec::new();
                    for row in rows {
                        let (relid, schema, table, kind, trees): (
                            i64,
                            String,
                            String,
                            String,
                            Vec<String>,
                        ) = (
                            row.try_get(0)?,
                            row.try_get(1)?,
                            row.try_get(2)?,
                            row.try_get(3)?,
                            row.try_get(4)?,
                        );
                        if !matches!(kind.as_str(), "r" | "p") {
                            return Ok(Err(format!(
                                "a policy reads {schema}.{table}, which is not a table"
                            )));
                        }
                        names.insert(relid, counter_of(&schema, &table));
                        for tree in &trees {
                            let refs = references(tree);
                            if refs.clock {
                                return Ok(Err(format!(
                                    "a policy of {schema}.{table} reads the clock"
                                )));
                            }
                            functions.extend(refs.functions);
                            operators.extend(refs.operators);
                            read.extend(refs.relations.iter().copied());
                            next.extend(refs.relations.into_iter().filter(|r| !seen.contains(r)));
                        }
                    }
                    next.sort_unstable();
                    next.dedup();
                    frontier = next;
                    if !operators.is_empty() {
                        for row in conn.query(OPERATORS, &[&operators]).await? {
                            functions.push(row.try_get(0)?);
                        }
                    }
                    if !functions.is_empty() {
                        for row in conn.query(FUNCTIONS, &[&functions]).await? {
                            let (schema, function, volatility): (String, String, String) =
                                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                            let allowed = volatility == "i"
                                || (schema == "pg_catalog"
                                    && SESSION_FUNCTIONS.contains(&function.as_str()))
                                || trusted.iter().any(|t| *t == format!("{schema}.{function}"));
                            if !allowed {
                                return Ok(Err(format!(
                                    "a policy calls {schema}.{function}, which may depend on more than the row, the role and the claims"
                                )));
                            }
                        }
                    }
                }
                // Every table a policy reads — the table itself too, when a policy reads
                // other rows of it: a write anywhere in it can change what a scope sees.
                let mut counters: Vec<String> =
                    read.iter().filter_map(|r| names.get(r).cloned()).collect();
                if counters.len() != read.len() {
                    return Ok(Err("a policy reads a relation not in the catalog".to_owned()));
                }
                counters.sort_unstable();
                counters.dedup();
                Ok(Ok(counters))
            })
            .await;
        let plan: Option<Arc<[String]>> = match plan {
            Ok(Ok(counters)) => Some(counters.into()),
            Ok(Err(reason)) => {
                tracing::info!(
                    table = meta.name,
                    reason = %reason,
                    "user-scoped reads of this table bypass the cache"
                );
                None
            }
            // Not known this time: asked again next time.
            Err(_) => return None,
        };
        if let Ok(mut plans) = self.shared.policy_plans.lock() {
            plans.insert(id, plan.clone());
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::references;

    #[test]
    fn references_name_functions_operators_relations_and_the_clock() {
        let tree = "{BOOLEXPR :boolop or :args ({OPEXPR :opno 98 :opfuncid 67 :args ({VAR :varno 1} \
             {FUNCEXPR :funcid 16385 :funcresulttype 25 :args <>})} {SUBLINK :subselect {QUERY \
             :rtable ({RANGETBLENTRY :rtekind 0 :relid 16386 :relkind r})}} \
             {ROWCOMPAREEXPR :opnos (o 96 97) :opfamilies (o 1976)} \
             {SQLVALUEFUNCTION :op 10 :type 19})}";
        let refs = references(tree);
        assert_eq!(refs.functions, vec![67, 16385]);
        assert_eq!(refs.operators, vec![98, 96, 97]);
        assert_eq!(refs.relations, vec![16386]);
        assert!(!refs.clock, "CURRENT_USER is not the clock");
        assert!(references("{SQLVALUEFUNCTION :op 3 :type 1184}").clock);
    }
}
