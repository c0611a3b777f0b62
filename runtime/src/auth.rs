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
//! Scoped handles never read the shared row cache or query cache: a row cached by one
//! user (or by the service role) would otherwise answer before the policy runs — a known
//! leak in other systems. Their writes still invalidate like any other, so every
//! scope's later reads, cached or not, see them. `#[cached]` functions know nothing of
//! scopes: put the user in the key (an argument) when a result depends on who asks.

use std::sync::Arc;

use crate::error::{Error, Result};

/// Who a scoped handle acts as: a role and the JWT claims its policies read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    role: &'static str,
    claims: Arc<str>,
}

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
        })
    }

    /// An anonymous request: role `anon`, no `sub`.
    pub(crate) fn anon() -> Scope {
        Scope {
            role: "anon",
            claims: r#"{"role":"anon"}"#.into(),
        }
    }

    /// The role and the claims (JSON text) a transaction switches to. They travel as
    /// bound parameters of `set_config('role', $1, true)` and
    /// `set_config('request.jwt.claims', $2, true)` — never as SQL text, so no server
    /// setting (`standard_conforming_strings = off`) can change what they say.
    pub(crate) fn parts(&self) -> (&'static str, Arc<str>) {
        (self.role, self.claims.clone())
    }
}
