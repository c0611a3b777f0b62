//! Versioned SQL migrations.
//!
//! A migration is a file `<version>_<name>.sql` (e.g. `0001_create_profiles.sql`).
//! [`Migrator::run`] applies the pending ones in version order, each in its own
//! transaction together with its record in `tabula_migrations` (version, name, SHA-256
//! checksum, time), so a failing file leaves nothing behind. Every step takes a
//! transaction-level advisory lock first: processes that start at once queue up, and
//! each re-checks what is applied after getting the lock, so every file is applied
//! exactly once. The lock ends with its transaction, so no crash can leave it held.
//!
//! A file that was edited after it was applied is refused with [`Error::Migration`]:
//! change the schema with a new migration instead. So is a pending migration whose
//! version is lower than the latest applied one (a file added "in the past", typically
//! from a branch merged late): applying it after its successors would run the files in
//! an order no fresh database sees. Rename it with a higher version, or opt in with
//! [`Migrator::allow_out_of_order`]. Because each file runs inside a
//! transaction, statements that cannot (`CREATE INDEX CONCURRENTLY`) are not supported.
//!
//! Migrations can be read from a folder at run time ([`Migrator::from_dir`]) or
//! embedded in the binary at compile time with [`embed_migrations!`](crate::embed_migrations);
//! both follow one file-name rule ([`parse_file_name`]). A build script calling
//! [`build::rerun_if_migrations_change`](crate::build::rerun_if_migrations_change)
//! makes Cargo re-embed the folder when a file is added to it.

use std::borrow::Cow;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::monitor;

/// Advisory lock key: the bytes of "tabulamg" as an i64, unlikely to meet another user's.
const LOCK_KEY: i64 = 0x7461_6275_6c61_6d67;

/// Where a track records what it applied: the application's migrations, and Tabula's
/// own (auth roles and functions, the storage schema) on a version track of their own,
/// so the two numberings never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    App,
    Builtin,
}

/// The track's record table, schema-qualified as the session finds it now: a script
/// may empty or change the search path (`pg_dump` output does), and the run is
/// recorded after it, in the same session.
async fn qualified_table(c: &tokio_postgres::Client, track: Track) -> Result<String> {
    let row = c
        .query_one(
            "SELECT pg_catalog.quote_ident(n.nspname), pg_catalog.quote_ident(t.relname) \
             FROM pg_catalog.pg_class t JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
             WHERE t.oid = pg_catalog.to_regclass($1)",
            &[&track.table()],
        )
        .await?;
    let (schema, table): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    Ok(format!("{schema}.{table}"))
}

impl Track {
    fn table(self) -> &'static str {
        match self {
            Track::App => "tabula_migrations",
            Track::Builtin => "tabula_builtin_migrations",
        }
    }

    fn setup(self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                version bigint PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
            self.table()
        )
    }
}

/// Tabula's own migrations, shipped in the crate (`runtime/migrations/`). Each is
/// idempotent, so a database that made the same objects through its own migrations
/// before they shipped takes them unchanged.
fn builtin_migrations() -> Vec<Migration> {
    vec![
        Migration::new(1, "auth", include_str!("../migrations/0001_auth.sql")),
        Migration::new(2, "storage", include_str!("../migrations/0002_storage.sql")),
        Migration::new(
            3,
            "storage_rls",
            include_str!("../migrations/0003_storage_rls.sql"),
        ),
    ]
}

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The number before the first `_` of the file name.
    pub version: i64,
    /// The rest of the file name, without `.sql`.
    pub name: Cow<'static, str>,
    /// The SQL text.
    pub sql: Cow<'static, str>,
    /// The SQL that undoes it (its `<version>_<name>.down.sql` file), if it has one:
    /// what [`Migrator::revert`] runs. Not part of the checksum, so a down file may be
    /// added to an applied migration.
    pub down: Option<Cow<'static, str>>,
}

impl Migration {
    /// A migration from its parts.
    ///
    /// ```
    /// let m = tabula::migrate::Migration::new(1, "init", "CREATE TABLE t (id int)");
    /// assert_eq!(m.checksum().len(), 64);
    /// ```
    pub fn new(
        version: i64,
        name: impl Into<Cow<'static, str>>,
        sql: impl Into<Cow<'static, str>>,
    ) -> Self {
        Migration {
            version,
            name: name.into(),
            sql: without_bom(sql.into()),
            down: None,
        }
    }

    /// The same migration with the SQL that undoes it.
    ///
    /// ```
    /// let m = tabula::migrate::Migration::new(1, "init", "CREATE TABLE t (id int)").with_down("DROP TABLE t");
    /// assert!(m.down.is_some());
    /// ```
    pub fn with_down(mut self, sql: impl Into<Cow<'static, str>>) -> Self {
        self.down = Some(without_bom(sql.into()));
        self
    }

    /// Hex SHA-256 of the SQL text.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The text without a leading UTF-8 byte-order mark (editors on some systems write
/// one; PostgreSQL would read it as part of the first word).
fn without_bom(sql: Cow<'static, str>) -> Cow<'static, str> {
    match sql.strip_prefix('\u{feff}') {
        Some(rest) => Cow::Owned(rest.to_owned()),
        None => sql,
    }
}

/// Splits `0001_create_profiles.sql` into `(1, "create_profiles")`; `None` for a name
/// that is not a migration's (the reason: [`tabula_build::parse_migration_file_name`]).
///
/// ```
/// assert_eq!(tabula::migrate::parse_file_name("0001_init.sql"), Some((1, "init")));
/// assert_eq!(tabula::migrate::parse_file_name("init.sql"), None);
/// assert_eq!(tabula::migrate::parse_file_name("99999999999999999999_x.sql"), None);
/// ```
pub fn parse_file_name(file_name: &str) -> Option<(i64, &str)> {
    tabula_build::parse_migration_file_name(file_name).ok()
}

/// An ordered set of migrations and the runner that applies them.
#[derive(Debug, Clone)]
pub struct Migrator {
    migrations: Vec<Migration>,
    allow_out_of_order: bool,
    track: Track,
    with_builtin: bool,
}

/// What [`Migrator::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Versions this run applied, in order.
    pub applied: Vec<i64>,
    /// Versions that were already applied.
    pub already_applied: Vec<i64>,
    /// Versions of Tabula's built-in track this run applied (with
    /// [`Migrator::with_builtin`]).
    pub builtin_applied: Vec<i64>,
}

impl Migrator {
    /// A migrator over `migrations`; two with the same version are refused.
    ///
    /// ```
    /// use tabula::migrate::{Migration, Migrator};
    /// let m = Migrator::new(vec![Migration::new(2, "b", "SELECT 1"), Migration::new(1, "a", "SELECT 1")])?;
    /// assert_eq!(m.migrations()[0].version, 1);
    /// assert!(Migrator::new(vec![Migration::new(1, "a", ""), Migration::new(1, "b", "")]).is_err());
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn new(mut migrations: Vec<Migration>) -> Result<Self> {
        migrations.sort_by_key(|m| m.version);
        if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(Error::Migration {
                version: pair[0].version,
                message: format!(
                    "two files have this version: `{}` and `{}`",
                    pair[0].name, pair[1].name
                ),
            });
        }
        Ok(Migrator {
            migrations,
            allow_out_of_order: false,
            track: Track::App,
            with_builtin: false,
        })
    }

    /// Tabula's own migrations alone, on their own version track (recorded in
    /// `tabula_builtin_migrations`): the roles `anon`, `authenticated` and
    /// `service_role` with `auth.uid()`, `auth.role()` and `auth.jwt()` for Row Level
    /// Security policies, and the `storage` schema of [`crate::storage`]. Usually
    /// applied through [`with_builtin`](Self::with_builtin).
    ///
    /// ```
    /// let builtin = tabula::migrate::Migrator::builtin();
    /// assert_eq!(builtin.migrations()[0].name, "auth");
    /// ```
    pub fn builtin() -> Self {
        Migrator {
            migrations: builtin_migrations(),
            // New built-in migrations may come with a crate upgrade below others a
            // database already has; each is written to apply in any order.
            allow_out_of_order: true,
            track: Track::Builtin,
            with_builtin: false,
        }
    }

    /// Applies Tabula's built-in migrations (see [`builtin`](Self::builtin)) before
    /// these, each track numbered on its own: your `0001_*.sql` never meets Tabula's.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let report = tabula::embed_migrations!("migrations").with_builtin().run(&db).await?;
    /// println!("tabula {:?}, yours {:?}", report.builtin_applied, report.applied);
    /// # Ok(()) }
    /// ```
    pub fn with_builtin(mut self) -> Self {
        self.with_builtin = true;
        self
    }

    /// Whether [`run`](Self::run) applies the built-in track first.
    pub fn includes_builtin(&self) -> bool {
        self.with_builtin
    }

    /// Whether a pending migration whose version is lower than the latest applied one
    /// is applied (`true`) or refused with [`Error::Migration`] (`false`, the default).
    ///
    /// Refusing is the safe default: a database that applied 1, 3 and then 2 ran its
    /// files in an order that a fresh database (1, 2, 3) never does, so the two can end
    /// with different schemas. Allow it only when the late file is independent of the
    /// ones after it.
    ///
    /// ```
    /// use tabula::migrate::{Migration, Migrator};
    /// let m = Migrator::new(vec![Migration::new(1, "a", "SELECT 1")])?.allow_out_of_order(true);
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn allow_out_of_order(mut self, allow: bool) -> Self {
        self.allow_out_of_order = allow;
        self
    }

    /// The migrations embedded by [`embed_migrations!`](crate::embed_migrations), which
    /// already sorted them and refused duplicate versions at compile time.
    #[doc(hidden)]
    pub fn embedded(migrations: Vec<Migration>) -> Self {
        Migrator {
            migrations,
            allow_out_of_order: false,
            track: Track::App,
            with_builtin: false,
        }
    }

    /// Reads every `<version>_<name>.sql` file of `dir`. Other files are refused with
    /// [`Error::Config`] naming the file and the rule it breaks (a version too large for
    /// 64 bits included), so a misnamed migration is not silently skipped.
    ///
    /// ```no_run
    /// let migrator = tabula::migrate::Migrator::from_dir("migrations")?;
    /// # Ok::<(), tabula::Error>(())
    /// ```
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::Config(format!(
                "cannot read migrations folder {}: {e}",
                dir.display()
            ))
        })?;
        let mut migrations = Vec::new();
        let mut downs: Vec<(i64, String, String, String)> = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::Config(format!("cannot read {}: {e}", dir.display())))?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let (version, name, down) = tabula_build::parse_migration_file(&file_name)
                .map_err(|e| Error::Config(e.to_string()))?;
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
            match down {
                true => downs.push((version, name.to_owned(), sql, file_name.clone())),
                false => migrations.push(Migration::new(version, name.to_owned(), sql)),
            }
        }
        for (version, name, sql, file) in downs {
            let Some(up) = migrations
                .iter_mut()
                .find(|m| m.version == version && m.name == name.as_str())
            else {
                return Err(Error::Config(format!(
                    "down file `{}` has no migration `{}.sql` beside it",
                    file.escape_debug(),
                    file.trim_end_matches(".down.sql").escape_debug()
                )));
            };
            if up.down.is_some() {
                return Err(Error::Config(format!(
                    "migration {version} has two down files"
                )));
            }
            up.down = Some(without_bom(sql.into()));
        }
        Migrator::new(migrations)
    }

    /// The migrations, in version order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// Applies every pending migration; see the [module docs](self).
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let report = tabula::migrate::Migrator::from_dir("migrations")?.run(&db).await?;
    /// println!("applied {:?}", report.applied);
    /// # Ok(()) }
    /// ```
    pub async fn run(&self, db: &Db) -> Result<MigrationReport> {
        self.run_to(db, None).await
    }

    /// [`run`](Self::run), stopping after version `target` (the pending migrations
    /// above it stay pending); `None`: all of them.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// tabula::migrate::Migrator::from_dir("migrations")?.run_to(&db, Some(3)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_to(&self, db: &Db, target: Option<i64>) -> Result<MigrationReport> {
        // A run this track refuses (an edited file, one out of order) changes nothing:
        // not even the built-in track.
        if self.with_builtin {
            self.plan(db, target).await?;
        }
        let builtin_applied = match self.with_builtin {
            true => Box::pin(Migrator::builtin().run(db)).await?.applied,
            false => Vec::new(),
        };
        // Migrations change the schema the cache's cascades follow.
        db.forget_schema();
        let track = self.track;
        let applied: Vec<(i64, String, String)> = db
            .transaction(|tx| async move {
                tx.with_client(async |c| {
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                        .await?;
                    c.batch_execute(&track.setup()).await?;
                    let rows = c
                        .query(
                            &format!(
                                "SELECT version, name, checksum FROM {} ORDER BY version",
                                track.table()
                            ),
                            &[],
                        )
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect())
                })
                .await
            })
            .await?;

        for (version, name, checksum) in &applied {
            match self.migrations.iter().find(|m| m.version == *version) {
                Some(m) if m.checksum() != *checksum => {
                    return Err(Error::Migration {
                        version: *version,
                        message: format!(
                            "`{}` was edited after it was applied (checksum {} in the database, {} on disk); add a new migration instead",
                            m.name,
                            short(checksum),
                            short(&m.checksum())
                        ),
                    });
                }
                Some(_) => {}
                None => tracing::warn!(
                    version,
                    name,
                    "applied migration is not known to this binary"
                ),
            }
        }

        // Refuse before applying anything, so a refused run changes nothing. `apply`
        // checks again under the lock, against what other processes applied meanwhile.
        if !self.allow_out_of_order
            && let Some(latest) = applied.iter().map(|(v, _, _)| *v).max()
            && let Some(late) = self
                .migrations
                .iter()
                .find(|m| m.version < latest && !applied.iter().any(|(v, _, _)| *v == m.version))
        {
            return Err(out_of_order(late, latest));
        }

        let mut report = MigrationReport {
            applied: Vec::new(),
            already_applied: Vec::new(),
            builtin_applied,
        };
        for migration in &self.migrations {
            if applied.iter().any(|(v, _, _)| *v == migration.version) {
                report.already_applied.push(migration.version);
                continue;
            }
            if target.is_some_and(|target| migration.version > target) {
                break;
            }
            let lower: Vec<i64> = self
                .migrations
                .iter()
                .map(|m| m.version)
                .filter(|v| *v < migration.version)
                .collect();
            if apply(db, migration, &lower, self.allow_out_of_order, track).await? {
                metrics::counter!(monitor::MIGRATIONS_APPLIED).increment(1);
                tracing::info!(version = migration.version, name = %migration.name, "applied migration");
                report.applied.push(migration.version);
            } else {
                report.already_applied.push(migration.version);
            }
        }
        Ok(report)
    }
}

/// Where one migration stands in a database (see [`Migrator::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied, and the file is as it was.
    Applied,
    /// Not applied yet.
    Pending,
    /// Applied, but the file changed since (its checksum differs).
    Edited,
    /// Applied, but no file of this migrator has its version.
    Missing,
}

/// One line of [`Migrator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The version.
    pub version: i64,
    /// The file's name (or the recorded one, for a missing file).
    pub name: String,
    /// Where it stands.
    pub state: MigrationState,
    /// The checksum of the file (`None` for a missing one).
    pub checksum: Option<String>,
    /// When it was applied.
    pub applied_at: Option<std::time::SystemTime>,
    /// Whether it has a down file.
    pub reversible: bool,
}

impl Migrator {
    /// Every migration of this migrator and every one the database recorded, in
    /// version order, with where it stands. Reads only; the record table is not
    /// created.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// for line in tabula::migrate::Migrator::from_dir("migrations")?.status(&db).await? {
    ///     println!("{} {} {:?}", line.version, line.name, line.state);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn status(&self, db: &Db) -> Result<Vec<MigrationStatus>> {
        let recorded = recorded(db, self.track).await?;
        let mut out: Vec<MigrationStatus> = self
            .migrations
            .iter()
            .map(|m| {
                let row = recorded.iter().find(|r| r.0 == m.version);
                let state = match row {
                    None => MigrationState::Pending,
                    Some(r) if r.2 != m.checksum() => MigrationState::Edited,
                    Some(_) => MigrationState::Applied,
                };
                MigrationStatus {
                    version: m.version,
                    name: m.name.to_string(),
                    state,
                    checksum: Some(m.checksum()),
                    applied_at: row.map(|r| r.3),
                    reversible: m.down.is_some(),
                }
            })
            .collect();
        for (version, name, _, at) in &recorded {
            if !self.migrations.iter().any(|m| m.version == *version) {
                out.push(MigrationStatus {
                    version: *version,
                    name: name.clone(),
                    state: MigrationState::Missing,
                    checksum: None,
                    applied_at: Some(*at),
                    reversible: false,
                });
            }
        }
        out.sort_by_key(|line| line.version);
        Ok(out)
    }

    /// The versions [`run_to`](Self::run_to) would apply now, in order (a dry run);
    /// the same refusals as a run (an edited file, a pending one below the latest
    /// applied), so a plan that succeeds is one a run follows.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let pending = tabula::migrate::Migrator::from_dir("migrations")?.plan(&db, None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn plan(&self, db: &Db, target: Option<i64>) -> Result<Vec<i64>> {
        let status = self.status(db).await?;
        if let Some(edited) = status.iter().find(|s| s.state == MigrationState::Edited) {
            return Err(Error::Migration {
                version: edited.version,
                message: format!("`{}` was edited after it was applied", edited.name),
            });
        }
        let latest = status
            .iter()
            .filter(|s| matches!(s.state, MigrationState::Applied | MigrationState::Missing))
            .map(|s| s.version)
            .max();
        let pending: Vec<&MigrationStatus> = status
            .iter()
            .filter(|s| s.state == MigrationState::Pending)
            .collect();
        // Every pending file, whatever the target: a run refuses them all the same.
        if !self.allow_out_of_order
            && let Some(latest) = latest
            && let Some(late) = pending.iter().find(|s| s.version < latest)
            && let Some(m) = self.migrations.iter().find(|m| m.version == late.version)
        {
            return Err(out_of_order(m, latest));
        }
        Ok(pending
            .iter()
            .filter(|s| target.is_none_or(|t| s.version <= t))
            .map(|s| s.version)
            .collect())
    }

    /// Fails with [`Error::Migration`] if an applied migration's file was edited or is
    /// missing — for CI, before deploying.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// tabula::migrate::Migrator::from_dir("migrations")?.verify(&db).await?;
    /// # Ok(()) }
    /// ```
    pub async fn verify(&self, db: &Db) -> Result<()> {
        for line in self.status(db).await? {
            let problem = match line.state {
                MigrationState::Edited => "was edited after it was applied",
                MigrationState::Missing => "is applied but its file is missing",
                _ => continue,
            };
            return Err(Error::Migration {
                version: line.version,
                message: format!("`{}` {problem}", line.name),
            });
        }
        Ok(())
    }

    /// Undoes the latest applied migration: runs its down file and removes its record,
    /// in one transaction under the migrations' lock. Refused with [`Error::Migration`]
    /// when nothing is applied, when the latest applied migration has no down file (or
    /// no file at all), or when its file was edited since it was applied. Returns the
    /// version reverted.
    ///
    /// ```no_run
    /// # async fn run(db: tabula::Db) -> tabula::Result<()> {
    /// let undone = tabula::migrate::Migrator::from_dir("migrations")?.revert(&db).await?;
    /// # Ok(()) }
    /// ```
    pub async fn revert(&self, db: &Db) -> Result<i64> {
        db.forget_schema();
        let track = self.track;
        let migrations = &self.migrations;
        let reverted = db
            .transaction(|tx| async move {
                tx.with_client(async |c| {
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                        .await?;
                    c.batch_execute(&track.setup()).await?;
                    let latest = c
                        .query_opt(
                            &format!(
                                "SELECT version, name, checksum FROM {} ORDER BY version DESC LIMIT 1",
                                track.table()
                            ),
                            &[],
                        )
                        .await?;
                    let Some(latest) = latest else {
                        return Err(Error::Migration {
                            version: 0,
                            message: "nothing is applied: there is nothing to revert".into(),
                        });
                    };
                    let (version, name, checksum): (i64, String, String) =
                        (latest.get(0), latest.get(1), latest.get(2));
                    let refuse = |message: String| Error::Migration { version, message };
                    let Some(migration) = migrations.iter().find(|m| m.version == version) else {
                        return Err(refuse(format!(
                            "`{name}` is the latest applied migration, but no file has its version"
                        )));
                    };
                    if migration.checksum() != checksum {
                        return Err(refuse(format!(
                            "`{name}` was edited after it was applied: its down file may not undo what ran"
                        )));
                    }
                    let Some(down) = &migration.down else {
                        return Err(refuse(format!(
                            "`{name}` has no down file (`{version}_{name}.down.sql`): it cannot be reverted"
                        )));
                    };
                    check_no_transaction_control(&Migration::new(version, name.clone(), down.clone()))?;
                    let record = qualified_table(c, track).await?;
                    c.batch_execute(&sealed(down)).await.map_err(|e| {
                        refuse(format!("the down file of `{name}` failed: {}", crate::Error::from(e)))
                    })?;
                    c.execute(
                        &format!("DELETE FROM {record} WHERE version = $1"),
                        &[&version],
                    )
                    .await?;
                    Ok(version)
                })
                .await
            })
            .await?;
        tracing::info!(version = reverted, "reverted migration");
        Ok(reverted)
    }
}

/// What the database recorded for a track: version, name, checksum, time — nothing
/// when it has no record table yet.
async fn recorded(
    db: &Db,
    track: Track,
) -> Result<Vec<(i64, String, String, std::time::SystemTime)>> {
    db.with_client(async |c| {
        let exists: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[&track.table()])
            .await?
            .get(0);
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let rows = c
            .query(
                &format!(
                    "SELECT version, name, checksum, applied_at FROM {} ORDER BY version",
                    track.table()
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    })
    .await
}

/// The refusal of `late`, pending below the applied version `latest`.
fn out_of_order(late: &Migration, latest: i64) -> Error {
    Error::Migration {
        version: late.version,
        message: format!(
            "`{}` is pending but migration {latest} is already applied; migrations apply in \
             version order, so give it a version above {latest} (or opt in with \
             `Migrator::allow_out_of_order(true)`, `--allow-out-of-order` on the command line)",
            late.name
        ),
    }
}

/// Statements that would end (or nest) the transaction a migration runs in: a
/// `COMMIT` in a file would make it half-applied, with no record, forever failing.
const TRANSACTION_CONTROL: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "prepare transaction",
];

/// The first word of each top-level statement of `sql`, lowercased (two for `PREPARE`:
/// `prepare transaction` ends a transaction, `prepare name AS …` does not): comments
/// (`--`, nested `/* */`), quoted strings (`'…'`, `E'…'`), quoted identifiers and
/// dollar-quoted bodies (`$tag$…$tag$`, function bodies) are skipped, not split; so
/// is the SQL-standard body of `CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC
/// … END`, whose statements end in `;` (see [`Routine`]).
fn statement_heads(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut heads = Vec::new();
    let mut head = String::new();
    let mut at_start = true;
    let mut routine = Routine::default();
    let mut word = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let in_word =
            b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80 || (b == b'$' && !word.is_empty());
        if in_word {
            word.push(b.to_ascii_lowercase() as char);
        } else {
            if !word.is_empty() {
                routine.word(&std::mem::take(&mut word));
            }
            let comment = matches!(
                (b, bytes.get(i + 1)),
                (b'-', Some(b'-')) | (b'/', Some(b'*'))
            );
            if !comment && !b.is_ascii_whitespace() && b != b';' {
                routine.token(b);
            }
        }
        match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' | b'"' => {
                // `E'…'` takes backslash escapes — `E` as a word of its own: in
                // `name'\'` the `e` ends a type name, and the string is plain.
                let escapes = b == b'\''
                    && i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && !(i > 1
                        && (bytes[i - 2].is_ascii_alphanumeric()
                            || matches!(bytes[i - 2], b'_' | b'$')
                            || bytes[i - 2] >= 0x80));
                i += 1;
                while i < bytes.len() {
                    if escapes && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == b {
                        if bytes.get(i + 1) == Some(&b) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                at_start = false;
                continue;
            }
            // `$tag$` opens a dollar-quoted body that runs to the same `$tag$` — but
            // not inside an identifier (`a$x$` is one name), where `$` is a letter;
            // nor does a tag start with a digit (`$1` is a parameter).
            b'$' if !(i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b'$'
                    || bytes[i - 1] >= 0x80))
                && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) =>
            {
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|n| i + 1 + n);
                if let Some(end) = tag_end.filter(|e| bytes[*e] == b'$') {
                    let tag = &sql[i..=end];
                    match sql[end + 1..].find(tag) {
                        Some(close) => i = end + 1 + close + tag.len(),
                        None => i = bytes.len(),
                    }
                    at_start = false;
                    continue;
                }
            }
            // Inside a routine's `BEGIN ATOMIC … END`, `;` ends a statement of the body.
            b';' if routine.depth > 0 => {
                routine.body_statement();
                i += 1;
                continue;
            }
            b';' => {
                if !head.is_empty() {
                    heads.push(std::mem::take(&mut head));
                }
                at_start = true;
                routine = Routine::default();
                i += 1;
                continue;
            }
            _ => {}
        }
        if at_start {
            if b.is_ascii_alphabetic() || (!head.is_empty() && b == b'_') {
                head.push(b.to_ascii_lowercase() as char);
            } else if b.is_ascii_whitespace() && head == "prepare" {
                head.push(' ');
            } else if b.is_ascii_whitespace() && head.ends_with(' ') {
                // Between `prepare` and its second word.
            } else if !head.is_empty() || !b.is_ascii_whitespace() {
                at_start = false;
            }
        }
        i += 1;
    }
    if !head.is_empty() {
        heads.push(head);
    }
    heads
}

/// What [`statement_heads`] knows of a statement's words, to tell a routine's
/// SQL-standard body from the top level. In a statement that starts `CREATE [OR
/// REPLACE] FUNCTION|PROCEDURE`, the words `BEGIN ATOMIC` outside parentheses open the
/// body; inside it, `CASE` opens a level that an `END` closes, and the `END` that
/// starts a statement of the body closes the body. A word after `.` or `AS` is a name
/// (`t.end`, `AS end`), never a keyword; `begin` alone is an identifier (a parameter,
/// a column, a function's name).
///
/// The scanner may only err towards splitting: a body it never enters is split at
/// its `;` (a refusal at worst), but a body entered where PostgreSQL sees none would
/// hide what follows.
#[derive(Default)]
struct Routine {
    /// The statement's first four words.
    first: [Option<String>; 4],
    seen: usize,
    /// Parentheses open in the header (a parameter list, `RETURNS TABLE (…)`).
    parens: usize,
    /// 0 outside the body, 1 in it, 1 + n inside n `CASE`s.
    depth: usize,
    /// The last token was the word `begin`, outside parentheses and the body.
    after_begin: bool,
    /// The next word starts a statement of the body.
    body_start: bool,
    /// The last token was `.` or the word `as`: the next word is a name.
    name_next: bool,
}

impl Routine {
    fn creates(&self) -> bool {
        let is = |n: usize, w: &[&str]| self.first[n].as_deref().is_some_and(|x| w.contains(&x));
        let kinds = ["function", "procedure"];
        is(0, &["create"])
            && (is(1, &kinds) || (is(1, &["or"]) && is(2, &["replace"]) && is(3, &kinds)))
    }

    fn word(&mut self, word: &str) {
        if let Some(slot) = self.first.get_mut(self.seen) {
            *slot = Some(word.to_owned());
        }
        self.seen += 1;
        let name = std::mem::take(&mut self.name_next);
        let body_start = std::mem::take(&mut self.body_start);
        let after_begin = std::mem::take(&mut self.after_begin);
        if !self.creates() {
            return;
        }
        self.name_next = word == "as";
        if name {
            return;
        }
        match (self.depth, word) {
            (0, "begin") if self.parens == 0 => self.after_begin = true,
            (0, "atomic") if after_begin => {
                self.depth = 1;
                self.body_start = true;
            }
            (1.., "case") => self.depth += 1,
            (1, "end") if body_start => self.depth = 0,
            (2.., "end") => self.depth -= 1,
            _ => {}
        }
    }

    /// Any other token but `;` (a quoted string or name, an operator, a parenthesis).
    fn token(&mut self, b: u8) {
        self.after_begin = false;
        self.body_start = false;
        self.name_next = b == b'.';
        if self.depth == 0 {
            match b {
                b'(' => self.parens += 1,
                b')' => self.parens = self.parens.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// A `;` inside the body.
    fn body_statement(&mut self) {
        self.after_begin = false;
        self.name_next = false;
        self.body_start = true;
    }
}

/// A migration file's SQL as it is sent: every statement of it run by PL/pgSQL's
/// `EXECUTE` inside a `DO` block, in the transaction Tabula opened. There the server
/// itself refuses anything that would end or split that transaction — `COMMIT`,
/// `ROLLBACK`, `BEGIN`, savepoints, `PREPARE TRANSACTION`, a `CALL` of a procedure
/// that commits — with an error that rolls the whole migration back, however the
/// statement is spelled or hidden. The statement scanner ([`statement_heads`]) only
/// gives the common cases a clearer message before anything is sent; nothing depends
/// on it being right.
///
/// The SQL travels as a dollar-quoted literal whose tag it does not contain, between
/// newlines.
fn sealed(sql: &str) -> String {
    let free = |kind: &str| {
        (0u64..)
            .map(|n| format!("$tabula_{kind}{n}$"))
            .find(|tag| !sql.contains(tag.as_str()))
            .unwrap_or_default()
    };
    let (inner, outer) = (free("sql"), free("do"));
    // Newlines keep the file's first and last characters from joining a tag (a file
    // ending in `$tabula_sql0` would close the literal early), and end a trailing
    // `--` comment. PL/pgSQL's EXECUTE refuses a string whose *last* statement is
    // `SELECT … INTO`: a `SELECT NULL` is always last.
    format!("DO {outer} BEGIN EXECUTE {inner}\n{sql}\n;SELECT NULL\n{inner}; END {outer}")
}

/// Refuses a migration whose SQL would end the transaction it runs in.
fn check_no_transaction_control(migration: &Migration) -> Result<()> {
    match statement_heads(&migration.sql)
        .into_iter()
        .find(|head| TRANSACTION_CONTROL.contains(&head.as_str()))
    {
        Some(head) => Err(Error::Migration {
            version: migration.version,
            message: format!(
                "`{}` contains a top-level `{}`: each migration runs in one transaction that \
                 Tabula opens and commits with its record, so a file may not end or nest it",
                migration.name,
                head.to_uppercase()
            ),
        }),
        None => Ok(()),
    }
}

/// Applies one migration unless another process did meanwhile; `Ok(true)` if applied here.
async fn apply(
    db: &Db,
    migration: &Migration,
    lower: &[i64],
    allow_out_of_order: bool,
    track: Track,
) -> Result<bool> {
    check_no_transaction_control(migration)?;
    let checksum = migration.checksum();
    let result = db
        .transaction(|tx| {
            let checksum = &checksum;
            async move {
                tx.with_client(async |c| {
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                        .await?;
                    let table = track.table();
                    let done = c
                        .query_opt(
                            &format!("SELECT 1 FROM {table} WHERE version = $1"),
                            &[&migration.version],
                        )
                        .await?;
                    if done.is_some() {
                        return Ok(false);
                    }
                    if !allow_out_of_order {
                        let latest: Option<i64> = c
                            .query_one(&format!("SELECT max(version) FROM {table}"), &[])
                            .await?
                            .get(0);
                        if let Some(latest) = latest.filter(|l| *l > migration.version) {
                            return Err(out_of_order(migration, latest));
                        }
                        // Every lower file applied: one reverted by another process
                        // meanwhile would leave a gap no fresh database has.
                        let below: i64 = c
                            .query_one(
                                &format!("SELECT count(*) FROM {table} WHERE version = ANY($1)"),
                                &[&lower],
                            )
                            .await?
                            .get(0);
                        if below != lower.len() as i64 {
                            return Err(Error::Migration {
                                version: migration.version,
                                message: format!(
                                    "`{}` would apply above a migration that is not applied \
                                     (reverted meanwhile?); run again",
                                    migration.name
                                ),
                            });
                        }
                    }
                    let record = qualified_table(c, track).await?;
                    c.batch_execute(&sealed(&migration.sql)).await?;
                    c.execute(
                        &format!(
                            "INSERT INTO {record} (version, name, checksum) VALUES ($1, $2, $3)"
                        ),
                        &[&migration.version, &migration.name.as_ref(), checksum],
                    )
                    .await?;
                    Ok(true)
                })
                .await
            }
        })
        .await;
    result.map_err(|e| match e {
        Error::Migration { .. } => e,
        other => Error::Migration {
            version: migration.version,
            message: format!("`{}` failed: {other}", migration.name),
        },
    })
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

#[cfg(test)]
mod statement_tests {
    use super::statement_heads;

    #[test]
    fn heads_skip_comments_strings_and_bodies() {
        let sql = "-- COMMIT in a comment\n/* ROLLBACK /* nested */ */ CREATE TABLE t (a text DEFAULT 'x; COMMIT');\n\
                   CREATE FUNCTION f() RETURNS void AS $body$ BEGIN COMMIT; END $body$ LANGUAGE plpgsql;\n\
                   INSERT INTO t VALUES (E'it\\'s; ROLLBACK'); commit; \"q;\" ";
        assert_eq!(
            statement_heads(sql),
            ["create", "create", "insert", "commit"]
        );
    }

    #[test]
    fn sql_standard_routine_bodies_are_one_statement() {
        let sql = "CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC\n\
                     SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT x;\nEND;\n\
                   create or replace procedure p() language sql begin atomic insert into t values (1); end;\n\
                   COMMIT; BEGIN; SELECT 'end'; END;";
        assert_eq!(
            statement_heads(sql),
            ["create", "create", "commit", "begin", "select", "end"]
        );
        // A `BEGIN` word outside a routine's creation is no block.
        assert_eq!(
            statement_heads("CREATE TABLE begin_x (a int); COMMIT"),
            ["create", "commit"]
        );
        // `begin` as an identifier in a routine (found from outside: each opened a
        // block, and the COMMIT after it was hidden).
        for sql in [
            "CREATE FUNCTION f(begin int) RETURNS int LANGUAGE sql AS 'SELECT 1'; COMMIT",
            "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'; COMMIT",
            "CREATE FUNCTION f() RETURNS TABLE (begin int) LANGUAGE sql AS 'SELECT 1'; COMMIT",
            "CREATE FUNCTION f(begin atomic) RETURNS int LANGUAGE sql AS 'SELECT 1'; COMMIT",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT begin FROM t; END; COMMIT",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE t.end WHEN 1 THEN 2 END AS end FROM t; END; COMMIT",
        ] {
            assert_eq!(statement_heads(sql), ["create", "commit"], "{sql}");
        }
        // `end` as a name inside a body does not close it.
        assert_eq!(
            statement_heads(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS end; END; SELECT 2"
            ),
            ["create", "select"]
        );
        // A typed literal whose type ends in `e` is a plain string (found from
        // outside: read as E'…', its backslash hid the COMMIT).
        assert_eq!(
            statement_heads("SELECT name'\\'; COMMIT; SELECT 1; -- '"),
            ["select", "commit", "select"]
        );
        assert_eq!(
            statement_heads("SELECT E'\\'; COMMIT; --'"),
            ["select"],
            "E'…' escapes: the string runs to the end"
        );
    }
}
