//! What a handler cannot be, refused with advice that points at the user's tokens.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{FnArg, PatType, ReturnType, Signature, Type};

pub(crate) const ARGUMENTS_ADVICE: &str =
    "a handler takes `(event: T)` or `(event: T, ctx: Context)`";
pub(crate) const RETURN_ADVICE: &str =
    "a handler returns `Result<(), E>`, or `Result<Event, E>` with `output = \"…\"`";

/// Checks that the function is a free, non-generic `async fn` of one or two owned arguments
/// with a return type. Types are checked by the compiler, against the generated code.
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
                        "#[handler] cannot take `self`: {ARGUMENTS_ADVICE}, as a free function; \
                         share state through `App::extension` and `ctx.extension::<T>()`"
                    ),
                ));
            }
            FnArg::Typed(PatType { ty, .. }) => {
                if let Type::Reference(reference) = &**ty {
                    return Err(syn::Error::new_spanned(
                        reference,
                        format!(
                            "a handler owns its arguments, so it cannot borrow them: \
                             {ARGUMENTS_ADVICE}, without `&`"
                        ),
                    ));
                }
            }
        }
    }
    match sig.inputs.len() {
        0 => Err(syn::Error::new(
            sig.paren_token.span.join(),
            format!("#[handler] needs the event to handle: {ARGUMENTS_ADVICE}"),
        )),
        1 | 2 => Ok(()),
        _ => {
            let extra: TokenStream = sig
                .inputs
                .iter()
                .skip(2)
                .map(ToTokens::to_token_stream)
                .collect();
            Err(syn::Error::new_spanned(
                extra,
                format!(
                    "#[handler] takes at most two arguments: {ARGUMENTS_ADVICE}; \
                     reach shared values through `ctx.extension::<T>()`"
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
    fn accepts_one_or_two_owned_arguments() {
        for ok in [
            "async fn bill(event: Order) -> Result<(), E>",
            "async fn bill(mut event: Order, ctx: Context) -> Result<Invoice, E>",
            "async fn bill((a, b): (u32, u32), _: Context) -> io::Result<()>",
        ] {
            let sig: Signature = syn::parse_str(ok).unwrap();
            assert!(check(&sig).is_ok(), "{ok}");
        }
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
                "async fn bill(e: O, c: Context, x: u32) -> R",
                "at most two",
            ),
            ("async fn bill(&self, e: O) -> R", "cannot take `self`"),
            ("async fn bill(e: &O) -> R", "cannot borrow"),
            ("async fn bill(e: O)", "needs a return type"),
        ] {
            let message = error(signature);
            assert!(message.contains(expected), "{signature}: {message}");
        }
    }
}
