//! User-scoped handles: the `Db` side of Row Level Security (see [`crate::auth`] for
//! the model and its guarantees). A scoped handle's statements run in a transaction
//! that switched to the scope's role and claims; a one-shot call opens one of its own,
//! found by the statements it runs through a task-local.

use std::future::Future;
use std::sync::Arc;

use super::{Db, TxHandle};
use crate::auth::Scope;
use crate::error::Result;

tokio::task_local! {
    /// The one-shot scoped transaction this task runs in, with the handle's database
    /// (the address of its shared state) it belongs to.
    static SCOPED_TX: (usize, TxHandle);
}

/// The scoped one-shot transaction this task is running in for `db`: opened by a
/// handle of the same database with the same scope. Another database's (or another
/// scope's) call running in the same task is none of this handle's business — a
/// statement of `db` must not run on its connection.
pub(crate) fn current_scoped_tx(db: &Db) -> Option<TxHandle> {
    let owner = Arc::as_ptr(&db.shared) as usize;
    SCOPED_TX
        .try_with(|(of, tx)| {
            (*of == owner && super::conn::same_scope(db.scope.as_deref(), tx.scope.as_deref()))
                .then(|| tx.clone())
        })
        .ok()
        .flatten()
}

pub(crate) async fn with_scoped_tx<T>(
    db: &Db,
    state: TxHandle,
    work: impl Future<Output = T>,
) -> T {
    let owner = Arc::as_ptr(&db.shared) as usize;
    SCOPED_TX.scope((owner, state), work).await
}

impl Db {
    fn scoped(&self, scope: Scope) -> Db {
        Db {
            shared: self.shared.clone(),
            // Bound to the transaction still: its statements are refused there
            // (`Db::conn`) rather than run outside it, beyond its ROLLBACK.
            tx: self.tx.clone(),
            scope: Some(Arc::new(scope)),
            route: self.route,
        }
    }

    /// A handle acting as the user `user_id` (role `authenticated`, claims
    /// `{"sub": user_id, "role": "authenticated"}`). Without the `uuid` feature,
    /// [`as_claims`](Self::as_claims) with those claims does the same for a user id of
    /// any form.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db, user: uuid::Uuid) -> tabula::Result<()> {
    /// let mine = db.as_user(user);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "uuid")]
    #[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
    pub fn as_user(&self, user_id: uuid::Uuid) -> Db {
        self.scoped(Scope::user(user_id))
    }

    /// A handle acting with arbitrary JWT claims; its role is the claims' `role`
    /// (`anon`, `authenticated` or `service_role`; `authenticated` when absent).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let scoped = db.as_claims(serde_json::json!({ "sub": "5b1f…", "role": "authenticated", "org": 7 }))?;
    /// # Ok(()) }
    /// ```
    pub fn as_claims(&self, claims: serde_json::Value) -> Result<Db> {
        Ok(self.scoped(Scope::claims(&claims)?))
    }

    /// A handle acting with the claims of `token`, once [`DbConfig::jwt`](crate::DbConfig::jwt)'s
    /// verifier checked it: the signature by a configured key (with that key's own
    /// algorithm), `exp`, `nbf`, audience and issuer — see [`crate::jwt`]. A token that
    /// fails any check is [`Error::Unauthenticated`](crate::Error::Unauthenticated); its
    /// claims then follow the rules of [`as_claims`](Self::as_claims).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db, bearer: &str) -> tabula::Result<()> {
    /// let user = db.as_jwt(bearer)?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn as_jwt(&self, token: &str) -> Result<Db> {
        let verifier = self.shared.config.jwt.as_ref().ok_or_else(|| {
            crate::Error::Config("no JWT verifier is configured (DbConfig::jwt)".into())
        })?;
        self.as_claims(verifier.verify(token)?)
    }

    /// A handle acting as an anonymous request (role `anon`, no `sub`).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let anon = db.as_anon();
    /// # Ok(()) }
    /// ```
    pub fn as_anon(&self) -> Db {
        self.scoped(Scope::anon())
    }

    /// Whether this handle is user-scoped.
    pub fn is_scoped(&self) -> bool {
        self.scope.is_some()
    }

    /// The user a scoped handle acts as: its claims' `sub`, when that is a UUID.
    #[cfg(feature = "storage")]
    pub(crate) fn scope_subject(&self) -> Option<uuid::Uuid> {
        self.scope.as_ref().and_then(|scope| scope.subject())
    }
}
