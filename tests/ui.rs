//! Compile-time checks of the derive: misuse fails with a precise, helpful error.

#[test]
fn derive_table_compile_errors_and_passes() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/table/*.rs");
    t.compile_fail("tests/ui/fail/cached/*.rs");
    t.compile_fail("tests/ui/fail/pg_enum/*.rs");
}
