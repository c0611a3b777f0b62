//! Re-embeds `migrations/` in the tests and examples when a file is added to it (an
//! edited file is tracked by `include_str!` already); see `tabula_build`.

fn main() -> std::io::Result<()> {
    tabula_build::rerun_if_migrations_change("migrations")
}
