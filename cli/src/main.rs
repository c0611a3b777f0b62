//! The `tabula` binary without application models: every command but `cache get` and
//! `cache warm`, which need a binary built with [`tabula_cli::main_with`].

fn main() -> std::process::ExitCode {
    tabula_cli::main()
}
