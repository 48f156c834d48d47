//! Compile-time behaviour of `#[handler]`: what it accepts, and the errors it gives.
//!
//! Regenerate the expected errors with `TRYBUILD=overwrite cargo test -p event-binder-macros --test ui`,
//! then read every changed `.stderr`: each must point at the user's tokens with advice.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
