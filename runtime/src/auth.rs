//! Row Level Security: user-scoped handles that PostgreSQL's policies enforce.
//!
//! [`Db::as_user`](crate::Db::as_user) (feature `uuid`),
//! [`Db::as_claims`](crate::Db::as_claims) and
//! [`Db::as_anon`](crate::Db::as_anon) return a handle with the
//! whole API — CRUD, queries, transactions; `stream` only inside a transaction —
//! whose every statement runs inside a
//! transaction that first switched to the role `authenticated` (or `anon`) and the
//! claims — `set_config('role', $1, true)` and `set_config('request.jwt.claims', $2,
//! true)`, both bound parameters, never SQL text — sent with the BEGIN and the first
//! statement in one round trip (a read sends its COMMIT in the same pipeline: one
//! round trip in all). Both end with the transaction; a connection given up half-way (an error, a
//! panic, a dropped future) is closed rather than returned to the pool. So no role and
//! no claims ever reach the next user of a pooled connection. The unscoped `Db` stays
//! the application's own role — the table owner, which RLS does not restrict (the
//! "service role").
//!
//! Tabula's built-in migrations
//! ([`Migrator::with_builtin`](crate::migrate::Migrator::with_builtin)) provide what
//! Supabase policies expect on any PostgreSQL: the roles `anon`, `authenticated`,
//! `service_role`, and `auth.uid()`, `auth.role()`, `auth.jwt()` reading the claims (an
//! absent or empty setting is NULL, never an error). The repository's example schema
//! adds owner policies on its tables (`migrations/0002_row_level_security.sql`).
//!
//! A row the policy hides is `NotFound` on read, update and delete — the same answer
//! as a row that does not exist — and an insert the policy refuses is
//! `PermissionDenied`.
//!
//! # The cache under RLS
//!
//! A scoped handle never reads the shared row cache or query cache — a row cached by
//! one user (or by the service role) would otherwise answer before the policy runs, a
//! known leak in other systems. It reads its *scope's own copies* instead: reads by key
//! (`read`, `read_many`) and cached queries (`.cached(…)`) of a model with a row cache
//! keep what the policy showed this scope under a name made of a SHA-256 of the role
//! and the claims, so two scopes never share an entry (anonymous requests share theirs:
//! same role, same claims). The copies obey the cache's contract (see
//! [`crate::cache`]):
//!
//! - every write through Tabula drops every scope's copy of the rows it wrote (one
//!   Redis hash per row, a field per scope, deleted whole), scoped writes included;
//! - a write to a table a policy reads (a membership table in
//!   `team IN (SELECT team FROM members WHERE user_id = auth.uid())`) makes every
//!   scope's copies of the policy's table miss: the versions of the tables the
//!   policies read are part of the copies' names. The tables are read from the
//!   catalog, from the policies' stored expressions, once per table;
//! - a table whose `SELECT` policies call a function that could depend on anything but
//!   the row, the role and the claims — the clock (`now()`, `CURRENT_TIMESTAMP`), a
//!   `STABLE` or `VOLATILE` function not named in
//!   [`CacheConfig::policy_functions`](crate::CacheConfig::policy_functions) (by
//!   default `auth.uid`, `auth.role`, `auth.jwt`) — or that read a view is not cached
//!   for scopes at all: its scoped reads go to the database, as every scoped read did
//!   before. The reason is logged once (`tracing`, level info).
//!
//! The copies' names also hold a fingerprint of everything else that decides what a
//! scope sees: every policy of the table and of the tables they read, their RLS
//! switches and grants, the login role and database, the settings those give
//! connections (`ALTER ROLE/DATABASE … SET`) and the handle's URL `options` — so a
//! policy changed through the handle (DDL runs through `execute_batch`, `with_client`
//! or a migration; inside a transaction, at its end), or by another process before
//! this one started, takes effect on the next read. A policy change made by another
//! process while this one runs is seen after a restart, or at once with
//! [`Db::invalidate_table`](crate::Db::invalidate_table). A handle with an
//! `after_connect` hook shares copies with every other handle that has one: if hooks
//! set settings policies read to different values, give them different cache
//! namespaces.
//!
//! Unique finders (`by_<field>`) under a scope, and everything inside a transaction,
//! read the database.
//!
//! `#[cached]` functions know nothing of scopes: put the user in the key (an argument)
//! when a result depends on who asks.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Who a scoped handle acts as: a role and the JWT claims its policies read.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    role: &'static str,
    claims: Arc<str>,
    /// The name of this scope's cache entries, made on first use.
    cache_id: std::sync::OnceLock<Arc<str>>,
}

impl PartialEq for Scope {
    fn eq(&self, other: &Scope) -> bool {
        self.role == other.role && self.claims == other.claims
    }
}

impl Eq for Scope {}

const ROLES: &[&str] = &["anon", "authenticated", "service_role"];

impl Scope {
    /// The claims' `sub`, when it is a UUID.
    #[cfg(feature = "storage")]
    pub(crate) fn subject(&self) -> Option<uuid::Uuid> {
        let claims: serde_json::Value = serde_json::from_str(&self.claims).ok()?;
        claims.get("sub")?.as_str()?.parse().ok()
    }

    /// The user `user_id`: role `authenticated`, claims `{"sub": …, "role": …}`.
    #[cfg(feature = "uuid")]
    pub(crate) fn user(user_id: uuid::Uuid) -> Scope {
        let claims = serde_json::json!({ "sub": user_id, "role": "authenticated" });
        Scope {
            role: "authenticated",
            claims: claims.to_string().into(),
            cache_id: std::sync::OnceLock::new(),
        }
    }

    /// Arbitrary claims; the role is the claims' `role` (one of `anon`,
    /// `authenticated`, `service_role`; `authenticated` when absent).
    pub(crate) fn claims(claims: &serde_json::Value) -> Result<Scope> {
        if !claims.is_object() {
            return Err(Error::Validation("claims must be a JSON object".into()));
        }
        let role = match claims.get("role") {
            None => "authenticated",
            Some(serde_json::Value::String(role)) => ROLES
                .iter()
                .find(|r| **r == role.as_str())
                .copied()
                .ok_or_else(|| {
                    Error::Validation(crate::error::unknown_word("role", role, ROLES))
                })?,
            Some(_) => {
                return Err(Error::Validation(
                    "the `role` claim must be a string".into(),
                ));
            }
        };
        let text = claims.to_string();
        if text.len() > 64 * 1024 {
            return Err(Error::Validation("claims are larger than 64 KiB".into()));
        }
        Ok(Scope {
            role,
            claims: text.into(),
            cache_id: std::sync::OnceLock::new(),
        })
    }

    /// An anonymous request: role `anon`, no `sub`.
    pub(crate) fn anon() -> Scope {
        Scope {
            role: "anon",
            claims: r#"{"role":"anon"}"#.into(),
            cache_id: std::sync::OnceLock::new(),
        }
    }

    /// The role and the claims (JSON text) a transaction switches to. They travel as
    /// bound parameters of `set_config('role', $1, true)` and
    /// `set_config('request.jwt.claims', $2, true)` — never as SQL text, so no server
    /// setting (`standard_conforming_strings = off`) can change what they say.
    pub(crate) fn parts(&self) -> (&'static str, Arc<str>) {
        (self.role, self.claims.clone())
    }

    /// The name of this scope's copies in the cache: 32 hex digits of a SHA-256 of the
    /// role and the claims' text (claims are serialized with sorted keys, so equal
    /// claims give equal text). A cryptographic hash: claims an attacker shapes cannot
    /// be made to name another user's copies.
    pub(crate) fn cache_id(&self) -> Arc<str> {
        self.cache_id
            .get_or_init(|| {
                use sha2::Digest;
                let mut hash = sha2::Sha256::new();
                hash.update(self.role.as_bytes());
                hash.update([0]);
                hash.update(self.claims.as_bytes());
                let digest = hash.finalize();
                digest[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into()
            })
            .clone()
    }
}
