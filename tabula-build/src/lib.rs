//! What Tabula needs at build time, with no dependencies so that a build script stays
//! cheap to compile (depending on `tabula` itself from `build.rs` would compile its
//! PostgreSQL, Redis and object-store clients a second time, for the build host).
//!
//! # Rebuilding when a migration is added
//!
//! [`embed_migrations!`](https://docs.rs/tabula/latest/tabula/macro.embed_migrations.html)
//! reads the migrations folder while the crate compiles and embeds each file with
//! `include_str!`, so rustc rebuilds the crate when an embedded file is *edited*. A
//! file *added* to the folder is not something rustc knows about: stable Rust gives a
//! procedural macro no way to depend on a folder. Cargo does — from a build script:
//!
//! ```no_run
//! // build.rs of the crate that calls `tabula::embed_migrations!("migrations")`,
//! // with `tabula-build` in its `[build-dependencies]`:
//! fn main() -> std::io::Result<()> {
//!     tabula_build::rerun_if_migrations_change("migrations")
//! }
//! ```
//!
//! The same functions are re-exported as `tabula::build` for reference, but a build
//! script should depend on this crate, not on `tabula`.
//!
//! # Migration file names
//!
//! [`parse_migration_file_name`] is the one rule for `<version>_<name>.sql`, shared by
//! the `embed_migrations!` macro (compile time) and `Migrator::from_dir` (run time), so
//! both accept and refuse the same names with the same messages.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

/// Prints the `cargo:rerun-if-changed` lines of [`write_rerun_lines`] to standard
/// output, where Cargo reads them when this runs inside a build script.
///
/// Cargo then re-runs the build script — and so recompiles the crate, re-expanding
/// `embed_migrations!` — when a file in `dir` is added, removed or edited. `dir` is
/// relative to the package's `Cargo.toml` (a build script's working directory).
///
/// # Errors
///
/// When `dir` exists but cannot be listed. A missing folder is not an error here (the
/// rerun line is still printed, so creating it triggers a rebuild); the macro reports it.
pub fn rerun_if_migrations_change(dir: impl AsRef<Path>) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    write_rerun_lines(dir.as_ref(), &mut out)?;
    out.flush()
}

/// Writes `cargo:rerun-if-changed=<dir>` and one such line for each entry of `dir`, in
/// name order. Cargo watches a listed folder as a whole (an added or removed file
/// changes it); the file lines make the dependency explicit in the build output.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("tabula-build-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("0001_init.sql"), "SELECT 1")?;
/// let mut out = Vec::new();
/// tabula_build::write_rerun_lines(&dir, &mut out)?;
/// let text = String::from_utf8(out).unwrap();
/// assert_eq!(text.lines().count(), 2);
/// assert!(text.lines().all(|l| l.starts_with("cargo:rerun-if-changed=")));
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// When `dir` exists but cannot be listed, or `out` fails.
pub fn write_rerun_lines(dir: impl AsRef<Path>, out: &mut impl Write) -> io::Result<()> {
    let dir = dir.as_ref();
    writeln!(out, "cargo:rerun-if-changed={}", dir.display())?;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        files.push(entry?.path());
    }
    files.sort();
    for file in files {
        writeln!(out, "cargo:rerun-if-changed={}", file.display())?;
    }
    Ok(())
}

/// Why a file name is not a migration's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileNameError {
    /// Not `<version>_<name>.sql` with a version of ASCII digits and a non-empty name.
    Malformed {
        /// The file name.
        file: String,
    },
    /// The version's digits are a number larger than `i64::MAX`, the largest version
    /// `tabula_migrations.version` (a `bigint`) can hold.
    VersionTooLarge {
        /// The file name.
        file: String,
    },
}

impl fmt::Display for FileNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileNameError::Malformed { file } => write!(
                f,
                "migration file `{}` is not named `<version>_<name>.sql`",
                file.escape_debug()
            ),
            FileNameError::VersionTooLarge { file } => write!(
                f,
                "migration file `{}` has a version too large for a 64-bit signed integer \
                 (at most {}); use a shorter number",
                file.escape_debug(),
                i64::MAX
            ),
        }
    }
}

impl std::error::Error for FileNameError {}

/// Splits `0001_create_profiles.sql` into `(1, "create_profiles")`.
///
/// ```
/// use tabula_build::{FileNameError, parse_migration_file_name};
/// assert_eq!(parse_migration_file_name("0001_init.sql"), Ok((1, "init")));
/// assert!(matches!(parse_migration_file_name("init.sql"), Err(FileNameError::Malformed { .. })));
/// assert!(matches!(
///     parse_migration_file_name("99999999999999999999_x.sql"),
///     Err(FileNameError::VersionTooLarge { .. })
/// ));
/// ```
///
/// # Errors
///
/// [`FileNameError`] says which rule the name breaks.
pub fn parse_migration_file_name(file_name: &str) -> Result<(i64, &str), FileNameError> {
    let stem = file_name
        .strip_suffix(".sql")
        .ok_or_else(|| FileNameError::Malformed {
            file: file_name.to_owned(),
        })?;
    parse_stem(stem, file_name)
}

/// `<version>_<name>` of the file `file_name` (for its errors).
fn parse_stem<'a>(stem: &'a str, file_name: &str) -> Result<(i64, &'a str), FileNameError> {
    let malformed = || FileNameError::Malformed {
        file: file_name.to_owned(),
    };
    let (version, name) = stem.split_once('_').ok_or_else(malformed)?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(malformed());
    }
    // Only digits are left, so the one way to fail is a number out of range.
    let version = version
        .parse::<i64>()
        .map_err(|_| FileNameError::VersionTooLarge {
            file: file_name.to_owned(),
        })?;
    Ok((version, name))
}

/// Splits a migration folder's file name into its version, its name, and whether it is
/// the migration's *down* file (`0001_create_profiles.down.sql`, which undoes
/// `0001_create_profiles.sql`).
///
/// ```
/// use tabula_build::parse_migration_file;
/// assert_eq!(parse_migration_file("0001_init.sql"), Ok((1, "init", false)));
/// assert_eq!(parse_migration_file("0001_init.down.sql"), Ok((1, "init", true)));
/// ```
///
/// # Errors
///
/// [`FileNameError`] says which rule the name breaks.
pub fn parse_migration_file(file_name: &str) -> Result<(i64, &str, bool), FileNameError> {
    match file_name.strip_suffix(".down.sql") {
        Some(stem) => parse_stem(stem, file_name).map(|(v, n)| (v, n, true)),
        None => parse_migration_file_name(file_name).map(|(v, n)| (v, n, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_files_are_named_after_their_migration() {
        assert_eq!(
            parse_migration_file("0002_add.down.sql"),
            Ok((2, "add", true))
        );
        assert_eq!(parse_migration_file("0002_add.sql"), Ok((2, "add", false)));
        assert!(parse_migration_file("_x.down.sql").is_err());
        assert!(parse_migration_file("0002_.down.sql").is_err());
    }

    #[test]
    fn the_largest_version_is_accepted_and_one_more_is_refused() {
        let max = format!("{}_x.sql", i64::MAX);
        assert_eq!(parse_migration_file_name(&max), Ok((i64::MAX, "x")));
        let over = "9223372036854775808_x.sql";
        let err = parse_migration_file_name(over).expect_err("over i64::MAX");
        assert!(matches!(err, FileNameError::VersionTooLarge { .. }));
        assert!(err.to_string().contains("9223372036854775807"), "{err}");
        // Leading zeros do not count towards the size.
        assert_eq!(
            parse_migration_file_name("0000000000000000000000001_x.sql"),
            Ok((1, "x"))
        );
    }

    #[test]
    fn signs_spaces_and_missing_parts_are_malformed() {
        for bad in [
            "+1_x.sql", "-1_x.sql", " 1_x.sql", "1 _x.sql", "1_.sql", "_x.sql", "1_x.SQL", "1.sql",
        ] {
            assert!(
                matches!(
                    parse_migration_file_name(bad),
                    Err(FileNameError::Malformed { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn rerun_lines_name_the_folder_then_each_file_in_order() {
        let dir = std::env::temp_dir().join(format!("tabula-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("0002_b.sql"), "SELECT 2").expect("write");
        std::fs::write(dir.join("0001_a.sql"), "SELECT 1").expect("write");
        let mut out = Vec::new();
        write_rerun_lines(&dir, &mut out).expect("lines");
        let text = String::from_utf8(out).expect("utf-8");
        let expected = format!(
            "cargo:rerun-if-changed={d}\ncargo:rerun-if-changed={d}/0001_a.sql\ncargo:rerun-if-changed={d}/0002_b.sql\n",
            d = dir.display()
        );
        assert_eq!(text, expected);
        std::fs::remove_dir_all(&dir).ok();
        // A missing folder is still watched, so creating it triggers a rebuild.
        let mut out = Vec::new();
        write_rerun_lines(&dir, &mut out).expect("missing folder");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!("cargo:rerun-if-changed={}\n", dir.display())
        );
    }
}
