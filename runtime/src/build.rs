//! Build-script helpers for [`embed_migrations!`](crate::embed_migrations).
//!
//! The macro embeds each migration with `include_str!`, so an *edited* file rebuilds
//! the crate; a file *added* to the folder does not, until something else forces a
//! rebuild, because stable Rust lets only a build script (not a macro) watch a folder.
//! Call [`rerun_if_migrations_change`] from the `build.rs` of the crate that embeds the
//! migrations:
//!
//! ```toml
//! [build-dependencies]
//! tabula-build = "0.1"
//! ```
//!
//! ```no_run
//! // build.rs
//! fn main() -> std::io::Result<()> {
//!     tabula_build::rerun_if_migrations_change("migrations")
//! }
//! ```
//!
//! The helpers live in the dependency-free `tabula-build` crate and are re-exported
//! here: a build script that depended on `tabula` would compile its PostgreSQL, Redis
//! and object-store clients a second time, for the build host.

pub use tabula_build::{
    FileNameError, parse_migration_file_name, rerun_if_migrations_change, write_rerun_lines,
};
