//! The attribute's arguments: `destination = "…"`, `group = "…"`, and so on, validated.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Path};

/// The arguments of `#[handler(…)]`, each checked and kept with its span.
pub(crate) struct Args {
    pub(crate) destination: LitStr,
    pub(crate) group: Option<LitStr>,
    pub(crate) output: Option<LitStr>,
    /// Re-emitted with a `usize` suffix.
    pub(crate) concurrency: Option<LitInt>,
    /// Re-emitted with a `u32` suffix.
    pub(crate) max_attempts: Option<LitInt>,
    /// The facade's path: `::event_binder` unless `crate = "…"` says otherwise.
    pub(crate) krate: Path,
}

const KNOWN_ARGUMENTS: &str =
    "`destination`, `group`, `output`, `concurrency`, `max_attempts` and `crate`";

/// The longest logical name, as `event_binder_core::MAX_NAME_LEN`.
const MAX_NAME_LEN: usize = 48;

/// What each argument looks like, for the advice in errors.
fn example(name: &str) -> &'static str {
    match name {
        "destination" => "destination = \"orders\"",
        "group" => "group = \"billing\"",
        "output" => "output = \"invoices\"",
        "concurrency" => "concurrency = 8",
        "max_attempts" => "max_attempts = 5",
        _ => "crate = \"::event_binder\"",
    }
}

#[derive(Default)]
struct Builder {
    destination: Option<LitStr>,
    group: Option<LitStr>,
    output: Option<LitStr>,
    concurrency: Option<LitInt>,
    max_attempts: Option<LitInt>,
    krate: Option<Path>,
}

impl Builder {
    /// One `name = value` pair.
    fn argument(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let path = &meta.path;
        let name = match path.get_ident() {
            Some(ident) => ident.unraw().to_string(),
            None => path_string(path),
        };
        if !matches!(
            name.as_str(),
            "destination" | "group" | "output" | "concurrency" | "max_attempts" | "crate"
        ) {
            return Err(syn::Error::new_spanned(
                path,
                format!(
                    "unknown argument `{name}` of #[handler]; the arguments are {KNOWN_ARGUMENTS}"
                ),
            ));
        }
        let example = example(&name);
        if !meta.input.peek(syn::Token![=]) {
            return Err(syn::Error::new_spanned(
                path,
                format!("`{name}` takes a value: write `{example}`"),
            ));
        }
        let value: Expr = meta.value()?.parse()?;
        let fresh = match name.as_str() {
            "destination" | "group" | "output" => {
                let lit = string_literal(&value, &name, example)?;
                check_name(&lit, &name)?;
                let slot = match name.as_str() {
                    "destination" => &mut self.destination,
                    "group" => &mut self.group,
                    _ => &mut self.output,
                };
                slot.replace(lit).is_none()
            }
            "concurrency" => {
                let lit = positive_integer::<usize>(&value, &name, example, "usize")?;
                self.concurrency.replace(lit).is_none()
            }
            "max_attempts" => {
                let lit = positive_integer::<u32>(&value, &name, example, "u32")?;
                self.max_attempts.replace(lit).is_none()
            }
            _ => {
                let lit = string_literal(&value, &name, example)?;
                let krate: Path = lit.parse().map_err(|_| {
                    syn::Error::new_spanned(
                        &lit,
                        "`crate` is the path of the event-binder facade, like `crate = \"::event_binder\"`",
                    )
                })?;
                self.krate.replace(krate).is_none()
            }
        };
        if fresh {
            Ok(())
        } else {
            Err(syn::Error::new_spanned(
                path,
                format!("`{name}` is given twice; give each argument of #[handler] once"),
            ))
        }
    }
}

impl Args {
    /// Parses and checks the tokens between the attribute's parentheses.
    pub(crate) fn parse(args: &TokenStream) -> syn::Result<Self> {
        let mut builder = Builder::default();
        let parser = syn::meta::parser(|meta| builder.argument(&meta));
        syn::parse::Parser::parse2(parser, args.clone())?;

        let Some(destination) = builder.destination else {
            let message =
                "#[handler] needs a destination to read: #[handler(destination = \"orders\")]";
            return Err(if args.is_empty() {
                syn::Error::new(Span::call_site(), message)
            } else {
                syn::Error::new_spanned(args, message)
            });
        };
        Ok(Args {
            destination,
            group: builder.group,
            output: builder.output,
            concurrency: builder.concurrency,
            max_attempts: builder.max_attempts,
            krate: builder
                .krate
                .unwrap_or_else(|| syn::parse_quote!(::event_binder)),
        })
    }
}

/// The path as written, for messages: `::event_binder`.
pub(crate) fn path_string(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

fn string_literal(value: &Expr, name: &str, example: &str) -> syn::Result<LitStr> {
    if let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = value
    {
        Ok(lit.clone())
    } else {
        Err(syn::Error::new_spanned(
            value,
            format!("`{name}` takes a string literal: write `{example}`"),
        ))
    }
}

/// A whole number above 0 that fits `N`, re-emitted with the `ty` suffix on the user's span.
fn positive_integer<N>(value: &Expr, name: &str, example: &str, ty: &str) -> syn::Result<LitInt>
where
    N: std::str::FromStr + PartialEq + Default,
    N::Err: std::fmt::Display,
{
    let Expr::Lit(ExprLit {
        lit: Lit::Int(lit), ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            format!("`{name}` takes a whole number greater than 0: write `{example}`"),
        ));
    };
    if !lit.suffix().is_empty() && lit.suffix() != ty {
        return Err(syn::Error::new_spanned(
            lit,
            format!("`{name}` is a `{ty}`: write `{example}`"),
        ));
    }
    let number: N = lit.base10_parse().map_err(|error| {
        syn::Error::new_spanned(lit, format!("`{name}` must fit in a `{ty}`: {error}"))
    })?;
    if number == N::default() {
        return Err(syn::Error::new_spanned(
            lit,
            format!("`{name}` must be greater than 0: write `{example}`"),
        ));
    }
    Ok(LitInt::new(
        &format!("{}{ty}", lit.base10_digits()),
        lit.span(),
    ))
}

/// The runtime's name rule (`event_binder_core::validate_destination`), at compile time.
fn check_name(lit: &LitStr, kind: &str) -> syn::Result<()> {
    let name = lit.value();
    let reason = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "it is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        ))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            .map(|bad| format!("{bad:?} is not allowed"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(syn::Error::new_spanned(
            lit,
            format!(
                "invalid {kind} name {name:?}: {reason}; a name is 1 to {MAX_NAME_LEN} \
                 ASCII letters, digits, '-' and '_'"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: &TokenStream) -> syn::Result<Args> {
        Args::parse(tokens)
    }

    #[test]
    fn reads_every_argument() {
        let args = parse(&quote!(
            destination = "orders",
            group = "billing",
            output = "invoices",
            concurrency = 8,
            max_attempts = 5u32,
            crate = "::event_binder_core"
        ))
        .unwrap();
        assert_eq!(args.destination.value(), "orders");
        assert_eq!(args.group.unwrap().value(), "billing");
        assert_eq!(args.output.unwrap().value(), "invoices");
        assert_eq!(args.concurrency.unwrap().to_string(), "8usize");
        assert_eq!(args.max_attempts.unwrap().to_string(), "5u32");
        assert_eq!(path_string(&args.krate), "::event_binder_core");
    }

    #[test]
    fn defaults_to_the_facade() {
        let args = parse(&quote!(destination = "orders")).unwrap();
        assert_eq!(path_string(&args.krate), "::event_binder");
        assert!(args.group.is_none() && args.output.is_none());
    }

    #[test]
    fn refuses_what_the_runtime_would() {
        for (tokens, expected) in [
            (quote!(), "needs a destination"),
            (quote!(group = "g"), "needs a destination"),
            (quote!(destination = "a.b"), "'.' is not allowed"),
            (quote!(destination = ""), "it is empty"),
            (
                quote!(destination = "o", group = "o", group = "p"),
                "given twice",
            ),
            (
                quote!(destination = "o", topic = "t"),
                "unknown argument `topic`",
            ),
            (quote!(destination = "o", concurrency = 0), "greater than 0"),
            (
                quote!(destination = "o", max_attempts = 0),
                "greater than 0",
            ),
            (
                quote!(destination = "o", max_attempts = 99999999999),
                "fit in a `u32`",
            ),
            (quote!(destination = "o", concurrency = 8u8), "is a `usize`"),
            (quote!(destination = "o", concurrency = "8"), "whole number"),
            (quote!(destination = ORDERS), "string literal"),
            (quote!(destination), "takes a value"),
            (
                quote!(destination = "o", crate = "not a path"),
                "path of the event-binder facade",
            ),
        ] {
            let error = parse(&tokens)
                .err()
                .unwrap_or_else(|| panic!("{tokens} parsed"));
            assert!(error.to_string().contains(expected), "{tokens}: {error}");
        }
        let long = "d".repeat(MAX_NAME_LEN + 1);
        let error = parse(&quote!(destination = #long)).err().unwrap();
        assert!(error.to_string().contains("the limit is 48"), "{error}");
        let longest = "d".repeat(MAX_NAME_LEN);
        assert!(parse(&quote!(destination = #longest)).is_ok());
    }
}
