//! What a handler cannot be, refused with advice that points at the user's tokens.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{FnArg, PatType, ReturnType, Signature, Type};

/// How many arguments a handler takes after its event: as many as the runtime implements
/// `IntoHandler` for.
pub(crate) const MAX_EXTRACTORS: usize = 6;

pub(crate) const ARGUMENTS_ADVICE: &str = "a handler takes its event, then up to 6 of \
     `Context`, `MessageId`, `Key`, `Attempt`, `Headers` and `State<S>`, in any order";
pub(crate) const RETURN_ADVICE: &str =
    "a handler returns `Result<(), E>`, or `Result<Event, E>` with `output = \"…\"`";

/// Checks that the function is a free, non-generic `async fn` of its event and up to
/// [`MAX_EXTRACTORS`] further owned arguments, with a return type. Types are checked by the
/// compiler, against the generated code.
pub(crate) fn check(sig: &Signature) -> syn::Result<()> {
    check_qualifiers(sig)?;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let tokens = if sig.generics.params.is_empty() {
            sig.generics.where_clause.to_token_stream()
        } else {
            sig.generics.to_token_stream()
        };
        return Err(syn::Error::new_spanned(
            tokens,
            "#[handler] cannot be generic: the runtime must know the event type to decode; \
             write one handler per event type (they may call a shared generic function)",
        ));
    }
    check_arguments(sig)?;
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            format!("#[handler] needs a return type: {RETURN_ADVICE}"),
        ));
    }
    Ok(())
}

fn check_qualifiers(sig: &Signature) -> syn::Result<()> {
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new_spanned(
            constness,
            "#[handler] cannot be a `const fn`: write a plain `async fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "#[handler] cannot be an `unsafe fn`: the runtime calls it for every message; \
             write a safe `async fn` and keep any `unsafe` block inside it",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "#[handler] cannot be an `extern fn`: write a plain Rust `async fn`",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[handler] needs an `async fn`: write `async fn` here",
        ));
    }
    Ok(())
}

fn check_arguments(sig: &Signature) -> syn::Result<()> {
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(variadic, ARGUMENTS_ADVICE));
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    format!(
                        "#[handler] cannot take `self`: write a free function, and share values \
                         through `App::state` and a `State<S>` argument; {ARGUMENTS_ADVICE}"
                    ),
                ));
            }
            FnArg::Typed(PatType { ty, .. }) => match &**ty {
                Type::Reference(reference) => {
                    return Err(syn::Error::new_spanned(
                        reference,
                        format!(
                            "a handler owns its arguments, so it cannot borrow them: \
                             write the type without `&`; {ARGUMENTS_ADVICE}"
                        ),
                    ));
                }
                Type::ImplTrait(impl_trait) => {
                    return Err(syn::Error::new_spanned(
                        impl_trait,
                        "#[handler] cannot be generic, and an `impl Trait` argument makes it so: \
                         the runtime must know each argument's type; name the type",
                    ));
                }
                _ => {}
            },
        }
    }
    match sig.inputs.len() {
        0 => Err(syn::Error::new(
            sig.paren_token.span.join(),
            format!("#[handler] needs the event to handle: {ARGUMENTS_ADVICE}"),
        )),
        count if count <= 1 + MAX_EXTRACTORS => Ok(()),
        count => {
            let extra: TokenStream = sig
                .inputs
                .iter()
                .skip(1 + MAX_EXTRACTORS)
                .map(ToTokens::to_token_stream)
                .collect();
            Err(syn::Error::new_spanned(
                extra,
                format!(
                    "#[handler] takes at most {} arguments, the event and {MAX_EXTRACTORS} \
                     more, not {count}: take `Context` alone to read the message's id, key, \
                     attempt and headers from it, and put shared values together in one app \
                     state, taken as `State<S>`",
                    1 + MAX_EXTRACTORS
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(signature: &str) -> String {
        let sig: Signature = syn::parse_str(signature).unwrap();
        check(&sig).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_event_and_up_to_six_owned_arguments() {
        for ok in [
            "async fn bill(event: Order) -> Result<(), E>",
            "async fn bill(mut event: Order, ctx: Context) -> Result<Invoice, E>",
            "async fn bill((a, b): (u32, u32), _: Context) -> io::Result<()>",
            "async fn bill(event: Order, State(db): State<Db>, id: MessageId) -> Result<(), E>",
            // Types are the compiler's to check: any owned type passes the macro.
            "async fn bill(event: Order, count: u32) -> Result<(), E>",
            "async fn bill(e: O, a: A, b: B, c: C, d: D, f: F, g: G) -> Result<(), E>",
        ] {
            let sig: Signature = syn::parse_str(ok).unwrap();
            assert!(check(&sig).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_advice_names_the_limit() {
        assert!(ARGUMENTS_ADVICE.contains(&format!("up to {MAX_EXTRACTORS} of")));
    }

    #[test]
    fn refuses_each_mistake_with_its_advice() {
        for (signature, expected) in [
            ("fn bill(e: O) -> R", "needs an `async fn`"),
            ("const fn bill(e: O) -> R", "`const fn`"),
            ("async unsafe fn bill(e: O) -> R", "`unsafe fn`"),
            ("async extern \"C\" fn bill(e: O) -> R", "`extern fn`"),
            ("async fn bill<T>(e: T) -> R", "cannot be generic"),
            (
                "async fn bill(e: O) -> R where O: Clone",
                "cannot be generic",
            ),
            ("async fn bill() -> R", "needs the event"),
            (
                "async fn bill(e: O, a: A, b: B, c: C, d: D, f: F, g: G, h: H) -> R",
                "at most 7 arguments, the event and 6 more, not 8",
            ),
            (
                "async fn bill(e: O, c: impl Clone) -> R",
                "`impl Trait` argument",
            ),
            ("async fn bill(e: O, c: &Context) -> R", "cannot borrow"),
            ("async fn bill(&self, e: O) -> R", "cannot take `self`"),
            ("async fn bill(e: &O) -> R", "cannot borrow"),
            ("async fn bill(e: O)", "needs a return type"),
        ] {
            let message = error(signature);
            assert!(message.contains(expected), "{signature}: {message}");
        }
    }
}
