//! Which user-scoped reads may use the cache, and under which versions (see
//! [`crate::auth`], "The cache under RLS").
//!
//! A scope's copy of a row stays right while nothing its visibility depends on
//! changes: the row itself (every write drops every scope's copies of it), the role and
//! the claims (the copy's name holds a hash of both), the policies themselves, the
//! grants and the connection's settings (a fingerprint of them is part of the name
//! too), and whatever the table's `SELECT` policies read besides the row. That last
//! part is read from the catalog, from the policies' stored expression trees, once per
//! table:
//!
//! - a table a policy reads (a subquery) — the version counters of it, of every
//!   partition or inheritance parent and child of it, under every name a model may
//!   give it (`schema.name`, and `name` when the search path finds it so), become part
//!   of the copy's name, so any write to it makes every scope's copies miss; its own
//!   policies are followed the same way;
//! - a function: `IMMUTABLE` ones depend on their arguments only (for an aggregate,
//!   its support functions are what is checked); of the others, only those that read
//!   the role or the settings (`current_setting`, `current_user`, …) and the functions
//!   named in [`CacheConfig::policy_functions`](crate::CacheConfig) (by default
//!   `auth.uid`, `auth.role` and `auth.jwt`, which read the claims) are allowed; a cast
//!   through text (`'now'::timestamptz`) is a call of the type's input function;
//! - anything else — the clock (`now()`, `CURRENT_TIMESTAMP`), another `STABLE` or
//!   `VOLATILE` function, a view, a materialized view or a foreign table — makes the
//!   table's scoped reads bypass the cache, as before: what they depend on cannot be
//!   versioned.

use std::collections::HashSet;
use std::sync::Arc;

use super::Db;
use crate::auth::Scope;
use crate::cache::backend::Scoped;

/// Relations by oid: their names, whether the search path finds them by their bare
/// name, their `SELECT` policies' expression trees, and the text of everything about
/// them that decides what a role sees (every policy, RLS switches, grants).
const RELATIONS: &str = "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, \
     to_regclass(quote_ident(c.relname)) IS NOT DISTINCT FROM c.oid, \
     coalesce((SELECT array_agg(p.polqual::text) FROM pg_policy p \
               WHERE p.polrelid = c.oid AND p.polcmd IN ('r', '*') AND p.polqual IS NOT NULL), \
              '{}'::text[]), \
     concat_ws(E'\\n', c.relrowsecurity, c.relforcerowsecurity, c.relacl::text, \
               (SELECT string_agg(concat_ws(' ', p.polname, p.polcmd, p.polpermissive, \
                                            p.polroles::text, p.polqual::text, p.polwithcheck::text), \
                                  E'\\n' ORDER BY p.polname) \
                FROM pg_policy p WHERE p.polrelid = c.oid)) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid::int8 = ANY($1)";

/// Every inheritance (and partition) ancestor and descendant of relations: a write
/// through any of them can change rows a policy reads.
const FAMILY: &str = "WITH RECURSIVE \
     up(oid) AS (SELECT unnest($1::int8[])::oid \
                 UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid), \
     down(oid) AS (SELECT unnest($1::int8[])::oid \
                   UNION SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.oid) \
     SELECT n.nspname::text, c.relname::text, \
            to_regclass(quote_ident(c.relname)) IS NOT DISTINCT FROM c.oid \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid IN (SELECT oid FROM up UNION SELECT oid FROM down)";

const TABLE_OID: &str = "SELECT to_regclass($1)::oid::int8";

/// Functions by oid — and for an aggregate, its support functions instead (an
/// aggregate is always recorded `IMMUTABLE`, whatever they do).
const FUNCTIONS: &str = "SELECT n.nspname::text, p.proname::text, p.provolatile::text \
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.oid::int8 = ANY($1) AND p.prokind <> 'a' \
     UNION ALL \
     SELECT n.nspname::text, p.proname::text, p.provolatile::text \
     FROM pg_aggregate a \
     JOIN pg_proc p ON p.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, \
                                 a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn) \
     JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE a.aggfnoid::oid::int8 = ANY($1)";

const OPERATORS: &str = "SELECT oprcode::oid::int8 FROM pg_operator WHERE oid::int8 = ANY($1)";

/// The input functions of types (what a cast through text calls).
const TYPE_INPUTS: &str = "SELECT typinput::oid::int8 FROM pg_type WHERE oid::int8 = ANY($1)";

/// Who the connection is and the settings its login role and database give it (the
/// handle adds its URL's options): a policy may read them, and two handles that differ
/// in them must not share copies. Read from `pg_db_role_setting`, since settings no
/// module defines (`app.tenant`) are not in `pg_settings`.
const SESSION: &str = "SELECT concat_ws(E'\\n', session_user, current_database(), \
     (SELECT string_agg(array_to_string(s.setconfig, E'\\n'), E'\\n' \
                        ORDER BY s.setdatabase, s.setrole) \
      FROM pg_db_role_setting s \
      WHERE s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = session_user)) \
        AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))))";

/// `pg_catalog` functions whose result depends on the role or the settings only — both
/// part of a scoped copy's name (the role and claims in the scope's id, the
/// connection's settings in the fingerprint).
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
    /// The types of casts through text (`CoerceViaIO`): their input functions run.
    pub(crate) text_casts: Vec<i64>,
    /// A `CURRENT_DATE`/`CURRENT_TIMESTAMP`/`LOCALTIME`… (an `SQLValueFunction` of the
    /// clock: its operations 0–8 in every PostgreSQL that has the node).
    pub(crate) clock: bool,
}

/// The oids an expression tree (`pg_node_tree` as text) names: functions
/// (`:funcid`, `:opfuncid`, `:aggfnoid`, `:winfnoid`), operators (`:opno`, `:opnos`),
/// relations (`:relid`), types cast through text (every `:resulttype` inside a
/// `COERCEVIAIO` node — more than needed, never fewer), and the clock.
pub(crate) fn references(tree: &str) -> References {
    let mut found = References::default();
    let number = |rest: &str| -> Option<i64> {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    // Where each `COERCEVIAIO` node ends (its matching brace; braces inside names are
    // escaped in a node tree).
    let mut casts: Vec<(usize, usize)> = Vec::new();
    for (start, _) in tree.match_indices("{COERCEVIAIO") {
        let mut depth = 0usize;
        let mut escaped = false;
        let mut end = tree.len();
        for (i, c) in tree[start..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        casts.push((start, end));
    }
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
            "resulttype" if casts.iter().any(|(s, e)| *s < at && at < *e) => {
                found.text_casts.extend(number(after).filter(|n| *n != 0));
            }
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

/// The names models may give a table: `schema.name` always, and `name` when the search
/// path finds it by that name (as it does tables in `public`).
pub(crate) fn spellings(schema: &str, name: &str, bare: bool) -> Vec<String> {
    let mut names = vec![format!("{schema}.{name}")];
    if bare || schema == "public" {
        names.push(name.to_owned());
    }
    names
}

/// What the analysis of one table found: the counters its scoped copies depend on and
/// a fingerprint of the policies, grants and settings it saw — or why its scoped
/// reads may not be cached.
type Analysis = std::result::Result<(Vec<String>, String), String>;

impl Db {
    /// Whose copies of `meta`'s rows this scoped handle reads through the cache: its
    /// scope's, under the fingerprint of the policies, grants and settings, versioned
    /// by the tables its policies read — or `None` when they may not be cached (see the
    /// module docs).
    pub(crate) async fn scoped_entries(
        &self,
        scope: &Scope,
        meta: &'static crate::TableMeta,
    ) -> Option<Scoped> {
        // A bare name this handle resolves its own way: see `Db::shared_reads_allowed`.
        if !self.names_as_others(meta) {
            return None;
        }
        let (counters, fingerprint) = self.policy_plan(meta).await?;
        Some(Scoped {
            id: format!("{}{fingerprint}", scope.cache_id()).into(),
            counters,
        })
    }

    /// The version counters a scoped copy of `meta`'s rows depends on and the
    /// fingerprint of what decided them, read once per table (again after DDL through
    /// the handle); `None`: not cacheable (or the catalog could not be read, this
    /// time).
    async fn policy_plan(
        &self,
        meta: &'static crate::TableMeta,
    ) -> Option<(Arc<[String]>, Arc<str>)> {
        let id = std::ptr::from_ref(meta) as usize;
        if let Some(known) = super::cached::per_table(&self.shared.policy_plans, id) {
            return known;
        }
        // DDL through the handle meanwhile makes this answer out of date: not kept.
        let schema_epoch = self.schema_epoch();
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
            // The catalog as the primary has it (a replica may not have replayed DDL).
            route: super::Route {
                primary: true,
                ..self.route
            },
        };
        let name = super::cached::regclass_text(meta);
        // What this handle's connections are given besides the role's and database's
        // settings: its URL's `options` (and whether a hook of its own runs at
        // connect — what it sets cannot be read back).
        let config = &self.shared.config;
        let options = config
            .url
            .parse::<tokio_postgres::Config>()
            .ok()
            .and_then(|pg| pg.get_options().map(str::to_owned))
            .unwrap_or_default();
        let session = format!("{options}\n{}", config.after_connect.is_some());
        let analysis = owner
            .run("policies", meta.name, async move |conn| {
                analyse(conn, &name, &trusted, &session).await
            })
            .await;
        let plan: Option<(Arc<[String]>, Arc<str>)> = match analysis {
            Ok(Ok((counters, fingerprint))) => Some((counters.into(), fingerprint.into())),
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
        if let Ok(mut plans) = self.shared.policy_plans.lock()
            && self.schema_epoch() == schema_epoch
        {
            plans.insert(id, plan.clone());
        }
        plan
    }
}

/// Reads the policies of the table `name` and of every table they read, transitively.
async fn analyse(
    conn: &mut crate::pool::PgConn,
    name: &str,
    trusted: &[String],
    session: &str,
) -> crate::Result<Analysis> {
    use sha2::Digest;
    let Some(oid) = conn
        .query_opt(TABLE_OID, &[&name])
        .await?
        .and_then(|row| row.get::<_, Option<i64>>(0))
    else {
        return Ok(Err("the table is not in the catalog".to_owned()));
    };
    let mut fingerprint = sha2::Sha256::new();
    fingerprint.update(session);
    if let Some(row) = conn.query_opt(SESSION, &[]).await? {
        fingerprint.update(row.try_get::<_, Option<String>>(0)?.unwrap_or_default());
    }
    let mut seen: HashSet<i64> = HashSet::new();
    let mut read: HashSet<i64> = HashSet::new();
    let mut frontier = vec![oid];
    while !frontier.is_empty() {
        if seen.len() > MAX_TABLES {
            return Ok(Err(format!("policies read more than {MAX_TABLES} tables")));
        }
        seen.extend(frontier.iter().copied());
        let rows = conn.query(RELATIONS, &[&frontier]).await?;
        let (mut functions, mut operators, mut casts, mut next) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let (schema, table, kind): (String, String, String) =
                (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let trees: Vec<String> = row.try_get(5)?;
            let decides: String = row.try_get(6)?;
            fingerprint.update(format!("{schema}.{table}\n{decides}\n"));
            if !matches!(kind.as_str(), "r" | "p") {
                return Ok(Err(format!(
                    "a policy reads {schema}.{table}, which is not a table"
                )));
            }
            for tree in &trees {
                let refs = references(tree);
                if refs.clock {
                    return Ok(Err(format!("a policy of {schema}.{table} reads the clock")));
                }
                functions.extend(refs.functions);
                operators.extend(refs.operators);
                casts.extend(refs.text_casts);
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
        if !casts.is_empty() {
            for row in conn.query(TYPE_INPUTS, &[&casts]).await? {
                functions.push(row.try_get(0)?);
            }
        }
        if !functions.is_empty() {
            for row in conn.query(FUNCTIONS, &[&functions]).await? {
                let (schema, function, volatility): (String, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let allowed = volatility == "i"
                    || (schema == "pg_catalog" && SESSION_FUNCTIONS.contains(&function.as_str()))
                    || trusted.iter().any(|t| *t == format!("{schema}.{function}"));
                if !allowed {
                    return Ok(Err(format!(
                        "a policy calls {schema}.{function}, which may depend on more than the row, the role and the claims"
                    )));
                }
            }
        }
    }
    // Every table a policy reads — the table itself too, when a policy reads other rows
    // of it: a write anywhere in it, or in a partition, parent or child of it, under
    // any name a model gives it, can change what a scope sees.
    let read: Vec<i64> = read.into_iter().collect();
    let mut counters = Vec::new();
    if !read.is_empty() {
        for row in conn.query(FAMILY, &[&read]).await? {
            let (schema, table, bare): (String, String, bool) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            counters.extend(
                spellings(&schema, &table, bare)
                    .into_iter()
                    .map(|name| format!("v:{name}")),
            );
        }
    }
    counters.sort_unstable();
    counters.dedup();
    let digest = fingerprint.finalize();
    let fingerprint: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Ok((counters, fingerprint)))
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
