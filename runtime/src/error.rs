//! One error type for everything Tabula does.
//!
//! Database errors are mapped from their SQLSTATE into variants you can match on
//! (a duplicate key is [`Error::UniqueViolation`] naming the constraint, a missing row
//! is [`Error::NotFound`] naming the table); whatever has no variant of its own is
//! [`Error::Database`] with the SQLSTATE and the server's message. Messages are
//! lowercase and name the table, column or constraint involved; they never contain
//! the values of a row.

use std::time::Duration;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Tabula.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No row with that key (or matching that filter) exists — or the caller may not see it.
    #[error("no matching row in table `{table}`")]
    NotFound {
        /// The table that was searched.
        table: &'static str,
    },
    /// A unique constraint (primary key included) refused the write.
    #[error("duplicate key violates unique constraint `{constraint}` on table `{table}`")]
    UniqueViolation {
        /// The table written to, as the server reported it.
        table: String,
        /// The name of the violated constraint.
        constraint: String,
    },
    /// A foreign key refused the write.
    #[error("foreign key constraint `{constraint}` on table `{table}` refused the write")]
    ForeignKeyViolation {
        /// The table written to.
        table: String,
        /// The name of the violated constraint.
        constraint: String,
    },
    /// NULL written to a NOT NULL column.
    #[error("null value in column `{column}` of table `{table}` violates not-null constraint")]
    NotNullViolation {
        /// The table written to.
        table: String,
        /// The column that may not be NULL.
        column: String,
    },
    /// A CHECK constraint refused the write.
    #[error("check constraint `{constraint}` on table `{table}` refused the write")]
    CheckViolation {
        /// The table written to.
        table: String,
        /// The name of the violated constraint.
        constraint: String,
    },
    /// The database refused the operation to the current role (or a policy forbade it).
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's explanation.
        message: String,
    },
    /// A token that does not prove who sent it (see `Db::as_jwt`, feature `jwt`): a bad
    /// signature, an algorithm no key accepts, expired, not valid yet, another audience
    /// or issuer.
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// Which check failed.
        reason: String,
    },
    /// The transaction could not be serialized (SQLSTATE 40001) or deadlocked (40P01),
    /// and retrying did not help within the configured attempts.
    #[error("transaction conflict (sqlstate {sqlstate}) after {attempts} attempt(s)")]
    Conflict {
        /// `40001` or `40P01`.
        sqlstate: String,
        /// How many times the transaction was run.
        attempts: u32,
    },
    /// An update that named the version it expected (`#[table(version)]`) found the row
    /// at another one: another writer changed it since it was read. Nothing was written;
    /// read it again and decide.
    #[error("`{table}` row changed since it was read (expected version {expected}, found {found})")]
    StaleVersion {
        /// The table written to.
        table: &'static str,
        /// The version the update expected.
        expected: i64,
        /// The version the row has.
        found: i64,
    },
    /// The connection was lost while COMMIT was in flight: the transaction may or may not
    /// have been committed. Tabula never retries this blindly; check and decide.
    #[error("connection lost during commit: the outcome of the transaction is unknown")]
    CommitOutcomeUnknown,
    /// PostgreSQL rolled the transaction back although its body returned `Ok`: a
    /// statement in it failed (and the body handled the error), so COMMIT could only
    /// roll back. Nothing the transaction wrote exists. Use a nested
    /// [`Db::transaction`](crate::Db::transaction) (a savepoint) around a statement whose
    /// failure you mean to handle.
    #[error("the transaction was rolled back by the database: a statement in it failed{}", .sqlstate.as_deref().map(|s| format!(" (sqlstate {s})")).unwrap_or_default())]
    TransactionAborted {
        /// The SQLSTATE of the failure that aborted it, when Tabula saw it.
        sqlstate: Option<String>,
    },
    /// A write outside a transaction whose answer was lost — no answer within its
    /// deadline and grace, or its connection closed after the statement went out — or
    /// the caller's own SQL (`with_client`, `execute_batch`, `sql`) cancelled at its
    /// deadline after parts of it may have committed: it may or may not have been
    /// applied. Never retried by Tabula, and not [transient](Error::is_transient):
    /// check before writing again. The cache entries it could have touched are
    /// invalidated all the same. (A write still waiting for a connection when its
    /// deadline passed sent nothing: that is [`Error::Timeout`].)
    #[error("`{operation}` on table `{table}` got no answer: it may or may not have been applied")]
    OutcomeUnknown {
        /// The write that was cut off.
        operation: &'static str,
        /// The table it wrote to.
        table: &'static str,
    },
    /// The API was used in a way that cannot work (a statement on a transaction from
    /// inside its own `with_client` body, a handle used after its transaction ended…).
    /// A bug in the calling code, not bad data: see the message for the right form.
    #[error("misuse of the api: {0}")]
    Misuse(String),
    /// Input refused before it reached the database.
    #[error("invalid input: {0}")]
    Validation(String),
    /// A value read from the database did not decode into the model's field.
    #[error("cannot decode column `{column}` of table `{table}`: {source}")]
    Decode {
        /// The table read from.
        table: &'static str,
        /// The column that failed.
        column: &'static str,
        /// What the driver reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No pooled connection became free (or could be opened) within the deadline.
    #[error("no database connection available within {0:?}")]
    PoolTimeout(Duration),
    /// No connection could be opened before the checkout deadline; the message is the
    /// last error the server or the network gave.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// An operation did not finish within its deadline.
    #[error("`{operation}` did not finish within {after:?}")]
    Timeout {
        /// The operation that timed out.
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The connection to the database failed or was lost.
    #[error("database connection error: {}", describe(.0))]
    Connection(#[source] tokio_postgres::Error),
    /// Any other error reported by PostgreSQL.
    #[error("database error (sqlstate {sqlstate}): {message}")]
    Database {
        /// The five-character SQLSTATE.
        sqlstate: String,
        /// The server's message.
        message: String,
        /// The driver's error, for its details.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The thing to create exists already (an uploaded object without `upsert`).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object store failed, or an upload body could not be read. The message names
    /// the operation and the object key, never a server path, so it may be shown to a
    /// client; the store's own error (which may name one) is kept as the source, for logs.
    #[error("storage error: {message}")]
    Storage {
        /// What failed, without server paths.
        message: String,
        /// The object store's (or the body's) error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A [`CacheService`](crate::cache::CacheService) call failed (only its explicit API
    /// reports this; `Db` falls back to PostgreSQL instead). Never contains cached bytes.
    #[error("cache error: {message}")]
    Cache {
        /// What failed; never the cached bytes.
        message: String,
        /// The driver's (or the decoder's) error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A migration could not be applied, or the applied ones do not match the files.
    #[error("migration {version}: {message}")]
    Migration {
        /// The migration's version number.
        version: i64,
        /// What is wrong.
        message: String,
    },
    /// The configuration is missing or malformed.
    #[error("configuration error: {0}")]
    Config(String),
    /// The models do not match the live tables ([`Db::verify`](crate::Db::verify)):
    /// every mismatch found, each naming its table and column.
    #[error("the models do not match the database:\n  {}", .problems.join("\n  "))]
    SchemaMismatch {
        /// One line per mismatch.
        problems: Vec<String>,
    },
}

impl Error {
    /// A cache error with a message and no underlying error.
    pub(crate) fn cache(message: impl Into<String>) -> Error {
        Error::Cache {
            message: message.into(),
            source: None,
        }
    }

    /// Whether trying again later may succeed: a lost connection, a pool or statement
    /// timeout, a serialization failure or a deadlock. Constraint violations, validation
    /// errors and [`Error::CommitOutcomeUnknown`] are not transient.
    ///
    /// ```
    /// let e = tabula::Error::PoolTimeout(std::time::Duration::from_secs(1));
    /// assert!(e.is_transient());
    /// assert!(!tabula::Error::Validation("bad".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Conflict { .. }
            | Error::PoolTimeout(_)
            | Error::Timeout { .. }
            | Error::Connect(_)
            | Error::Connection(_) => true,
            Error::Database { sqlstate, .. } => is_transient_sqlstate(sqlstate),
            _ => false,
        }
    }

    /// The SQLSTATE of a database error, when there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database { sqlstate, .. } | Error::Conflict { sqlstate, .. } => Some(sqlstate),
            Error::UniqueViolation { .. } => Some("23505"),
            Error::ForeignKeyViolation { .. } => Some("23503"),
            Error::NotNullViolation { .. } => Some("23502"),
            Error::CheckViolation { .. } => Some("23514"),
            _ => None,
        }
    }

    /// A prepared statement that a schema change made stale ("cached plan must not
    /// change result type", 0A000) or that the server no longer has (26000): it is
    /// prepared again by its next use, so running it again succeeds.
    /// Told by the server routine that raised it as well as its SQLSTATE: both codes
    /// are general (0A000 is any unsupported feature, and a function may raise
    /// either), and only this case goes away by preparing again. The routine, not the
    /// message, which a server translates (`lc_messages`).
    pub(crate) fn is_stale_statement(&self) -> bool {
        let Error::Database {
            sqlstate, source, ..
        } = self
        else {
            return false;
        };
        let routine = source.as_db_error().and_then(|e| e.routine());
        matches!(
            (sqlstate.as_str(), routine),
            ("0A000", Some("RevalidateCachedQuery")) | ("26000", Some("FetchPreparedStatement"))
        )
    }

    /// A serialization failure or deadlock, which a transaction retry may resolve.
    pub(crate) fn is_retryable_conflict(&self) -> bool {
        matches!(
            self.sqlstate(),
            Some(SERIALIZATION_FAILURE | DEADLOCK_DETECTED)
        )
    }
}

pub(crate) const SERIALIZATION_FAILURE: &str = "40001";
/// The server cancelled the statement (its `statement_timeout`, or a cancel request).
pub(crate) const QUERY_CANCELED: &str = "57014";
/// A statement sent in a transaction that an earlier failure aborted.
pub(crate) const IN_FAILED_TRANSACTION: &str = "25P02";
pub(crate) const DEADLOCK_DETECTED: &str = "40P01";

/// The driver's error with the server's own message, which its `Display` leaves out.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => {
            // The cause says what went wrong (a refused certificate, a reset socket);
            // the driver's own text only says where.
            let mut text = err.to_string();
            let mut cause = std::error::Error::source(err);
            while let Some(c) = cause {
                let more = c.to_string();
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                cause = c.source();
            }
            text
        }
    }
}

fn is_transient_sqlstate(code: &str) -> bool {
    // 40xxx transaction rollback, 08xxx connection exceptions, 57P0x shutdown/crash,
    // 53300 too many connections, 55P03 lock not available, 57014 statement timeout.
    code.starts_with("40")
        || code.starts_with("08")
        || code.starts_with("57P0")
        || code == "53300"
        || code == "55P03"
        || code == "57014"
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        let Some(db) = err.as_db_error() else {
            // A value that does not fit its parameter or column type is a bug in the
            // calling code (the raw client's), not a lost connection to retry.
            let text = err.to_string();
            if !err.is_closed()
                && (text.starts_with("error serializing")
                    || text.starts_with("error deserializing"))
            {
                let cause = std::error::Error::source(&err)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                return Error::Misuse(format!("{text}{cause}"));
            }
            return Error::Connection(err);
        };
        // A FATAL error ends the session (the server shut the connection down, or an
        // administrator killed it): report it as the lost connection it is.
        let fatal = matches!(
            db.parsed_severity(),
            Some(tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic)
        );
        if fatal || db.code().code().starts_with("08") {
            return Error::Connection(err);
        }
        let table = db.table().unwrap_or("?").to_owned();
        let constraint = || db.constraint().unwrap_or("?").to_owned();
        match db.code().code() {
            "23505" => Error::UniqueViolation {
                table,
                constraint: constraint(),
            },
            "23503" => Error::ForeignKeyViolation {
                table,
                constraint: constraint(),
            },
            "23502" => Error::NotNullViolation {
                table,
                column: db.column().unwrap_or("?").to_owned(),
            },
            "23514" => Error::CheckViolation {
                table,
                constraint: constraint(),
            },
            // Text PostgreSQL cannot store (a NUL byte, an unsupported escape in jsonb),
            // or a LIKE pattern it cannot read (one ending in its escape character):
            // bad input, not a server fault.
            "22021" | "22P05" | "22025" => {
                Error::Validation(format!("value rejected by the database: {}", db.message()))
            }
            "42501" => Error::PermissionDenied {
                message: db.message().to_owned(),
            },
            code => Error::Database {
                sqlstate: code.to_owned(),
                message: db.message().to_owned(),
                source: err,
            },
        }
    }
}

/// "unknown <kind> `word`; expected one of `a`, `b`" for errors about user input.
pub(crate) fn unknown_word(kind: &str, word: &str, accepted: &[&str]) -> String {
    let list = accepted
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let shown: String = word.chars().take(40).collect();
    format!(
        "unknown {kind} `{}`; expected one of {list}",
        shown.escape_debug()
    )
}
