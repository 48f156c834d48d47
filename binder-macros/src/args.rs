//! The attribute's arguments: `destination = "…"`, `group = "…"`, and so on, validated.
//!
//! Durations (`backoff = "100ms..10s"`, `timeout = "5s"`, `batch_wait = "50ms"`) are read
//! here, at expansion time, and emitted as whole milliseconds: a whole number followed by `ms`, `s`, `m` or
//! `h`, with nothing else inside the string.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, ExprUnary, Lit, LitBool, LitFloat, LitInt, LitStr, Path, UnOp};

/// The arguments of `#[handler(…)]`, each checked and kept with its span.
pub(crate) struct Args {
    pub(crate) destination: LitStr,
    pub(crate) group: Option<LitStr>,
    pub(crate) output: Option<LitStr>,
    /// Re-emitted with a `usize` suffix.
    pub(crate) concurrency: Option<LitInt>,
    /// Re-emitted with a `u32` suffix.
    pub(crate) max_attempts: Option<LitInt>,
    /// The first and the longest wait, in milliseconds (`u64`-suffixed, on the string's span).
    pub(crate) backoff: Option<(LitInt, LitInt)>,
    /// From 0.0 to 1.0, `f64`-suffixed.
    pub(crate) jitter: Option<LitFloat>,
    /// In milliseconds, above 0 (`u64`-suffixed, on the string's span).
    pub(crate) timeout: Option<LitInt>,
    /// `retry = "broker"` is `true`, `retry = "in_process"` is `false`.
    pub(crate) retry_through_broker: Option<LitBool>,
    /// A batch handler: the most messages in one batch (`usize`-suffixed), and the longest
    /// wait for more after the first, in milliseconds (`u64`-suffixed, on the string's
    /// span), or `None` for core's default.
    pub(crate) batch: Option<(LitInt, Option<LitInt>)>,
    /// The facade's path: `::event_binder` unless `crate = "…"` says otherwise.
    pub(crate) krate: Path,
}

const KNOWN_ARGUMENTS: &str = "`destination`, `group`, `output`, `concurrency`, \
     `max_attempts`, `backoff`, `jitter`, `timeout`, `retry`, `batch`, `batch_wait` and `crate`";

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
        "backoff" => "backoff = \"100ms..10s\"",
        "jitter" => "jitter = 0.2",
        "timeout" => "timeout = \"5s\"",
        "retry" => "retry = \"broker\"",
        "batch" => "batch = 100",
        "batch_wait" => "batch_wait = \"50ms\"",
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
    backoff: Option<(LitInt, LitInt)>,
    jitter: Option<LitFloat>,
    timeout: Option<LitInt>,
    retry_through_broker: Option<LitBool>,
    batch: Option<LitInt>,
    batch_wait: Option<LitInt>,
    krate: Option<Path>,
    /// Each argument given, as written (`output = "invoices"`), for errors about two
    /// arguments that do not go together.
    written: Vec<(String, TokenStream)>,
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
            "destination"
                | "group"
                | "output"
                | "concurrency"
                | "max_attempts"
                | "backoff"
                | "jitter"
                | "timeout"
                | "retry"
                | "batch"
                | "batch_wait"
                | "crate"
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
        self.written
            .push((name.clone(), quote::quote!(#path = #value)));
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
            "backoff" => {
                let lit = string_literal(&value, &name, example)?;
                let backoff = backoff(&lit)?;
                self.backoff.replace(backoff).is_none()
            }
            "jitter" => {
                let lit = share(&value, &name, example)?;
                self.jitter.replace(lit).is_none()
            }
            "batch" => {
                let lit = positive_integer::<usize>(&value, &name, example, "usize")?;
                self.batch.replace(lit).is_none()
            }
            "batch_wait" => {
                let lit = string_literal(&value, &name, example)?;
                let millis = duration(&lit, &lit.value(), "`batch_wait`", example)?;
                self.batch_wait
                    .replace(millis_literal(millis, &lit))
                    .is_none()
            }
            "timeout" => {
                let lit = string_literal(&value, &name, example)?;
                let millis = duration(&lit, &lit.value(), "`timeout`", example)?;
                if millis == 0 {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        format!("`timeout` must be longer than 0: write `{example}`"),
                    ));
                }
                self.timeout.replace(millis_literal(millis, &lit)).is_none()
            }
            "retry" => {
                let lit = string_literal(&value, &name, example)?;
                let through_broker = match lit.value().as_str() {
                    "broker" => true,
                    "in_process" => false,
                    other => {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!(
                                "`retry` is \"broker\" (wait between attempts by handing the \
                                 message back to the broker) or \"in_process\" (wait in the \
                                 handler's slot), not {other:?}: write `retry = \"broker\"` or \
                                 `retry = \"in_process\"`"
                            ),
                        ))
                    }
                };
                let lit = LitBool::new(through_broker, lit.span());
                self.retry_through_broker.replace(lit).is_none()
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

impl Builder {
    /// `batch` and `batch_wait`, checked against the arguments that do not go with them.
    fn batch_arguments(&mut self) -> syn::Result<Option<(LitInt, Option<LitInt>)>> {
        let written = |name: &str| {
            self.written
                .iter()
                .find(|(given, _)| given == name)
                .map(|(_, tokens)| tokens.clone())
        };
        let Some(size) = self.batch.take() else {
            return match written("batch_wait") {
                Some(tokens) => Err(syn::Error::new_spanned(
                    tokens,
                    "`batch_wait` is how long a batch waits for more messages after its \
                     first, so it needs `batch`, the most messages in one batch: write \
                     `batch = 100, batch_wait = \"50ms\"`, or remove `batch_wait`",
                )),
                None => Ok(None),
            };
        };
        if let Some(tokens) = written("output") {
            return Err(syn::Error::new_spanned(
                tokens,
                "a batch handler publishes nothing, so it takes no `output`: remove \
                 `output`, or remove `batch` to make a processor that handles one event at \
                 a time and publishes what it returns",
            ));
        }
        if let Some(tokens) = written("concurrency") {
            return Err(syn::Error::new_spanned(
                tokens,
                "a batch handler handles one batch at a time, so it takes no \
                 `concurrency`: `batch` sets how many messages it takes at once",
            ));
        }
        if let Some(LitBool { value: true, .. }) = self.retry_through_broker {
            if let Some(tokens) = written("retry") {
                return Err(syn::Error::new_spanned(
                    tokens,
                    "a batch handler retries the events that failed in process, together \
                     as a smaller batch, so it cannot retry through the broker: remove \
                     `retry = \"broker\"`",
                ));
            }
        }
        Ok(Some((size, self.batch_wait.take())))
    }
}

impl Args {
    /// Parses and checks the tokens between the attribute's parentheses.
    pub(crate) fn parse(args: &TokenStream) -> syn::Result<Self> {
        let mut builder = Builder::default();
        let parser = syn::meta::parser(|meta| builder.argument(&meta));
        syn::parse::Parser::parse2(parser, args.clone())?;

        let Some(destination) = builder.destination.take() else {
            let message =
                "#[handler] needs a destination to read: #[handler(destination = \"orders\")]";
            return Err(if args.is_empty() {
                syn::Error::new(Span::call_site(), message)
            } else {
                syn::Error::new_spanned(args, message)
            });
        };
        let batch = builder.batch_arguments()?;
        Ok(Args {
            destination,
            group: builder.group,
            output: builder.output,
            concurrency: builder.concurrency,
            max_attempts: builder.max_attempts,
            backoff: builder.backoff,
            jitter: builder.jitter,
            timeout: builder.timeout,
            retry_through_broker: builder.retry_through_broker,
            batch,
            krate: builder
                .krate
                .unwrap_or_else(|| syn::parse_quote!(::event_binder)),
        })
    }
}

/// The path as written, for messages: `::event_binder`.
pub(crate) fn path_string(path: &Path) -> String {
    written(path)
}

/// Tokens as written, without the spaces the printer adds, for messages: `-0.5`.
fn written(tokens: &dyn ToTokens) -> String {
    tokens.to_token_stream().to_string().replace(' ', "")
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

/// How a duration is written, for the advice in errors.
const DURATION_FORM: &str = "a duration is a whole number followed by `ms`, `s`, `m` (minutes) \
     or `h`, with no spaces";

/// `"100ms..10s"`: the first and the longest wait, as `u64` millisecond literals.
fn backoff(lit: &LitStr) -> syn::Result<(LitInt, LitInt)> {
    const EXAMPLE: &str = "backoff = \"100ms..10s\"";
    let text = lit.value();
    let Some((first, longest)) = text.split_once("..") else {
        return Err(syn::Error::new_spanned(
            lit,
            format!(
                "`backoff` is the first and the longest wait between attempts, separated by \
                 `..`, not {text:?}: write `{EXAMPLE}`"
            ),
        ));
    };
    for (end, which) in [(first, "first"), (longest, "longest")] {
        if end.is_empty() {
            return Err(syn::Error::new_spanned(
                lit,
                format!(
                    "`backoff` {text:?} has no {which} wait; give both the first and the \
                     longest wait: write `{EXAMPLE}`"
                ),
            ));
        }
    }
    let first_ms = duration(lit, first, "the first wait of `backoff`", EXAMPLE)?;
    let longest_ms = duration(lit, longest, "the longest wait of `backoff`", EXAMPLE)?;
    if longest_ms == 0 {
        return Err(syn::Error::new_spanned(
            lit,
            format!("the longest wait of `backoff` must be longer than 0: write `{EXAMPLE}`"),
        ));
    }
    if first_ms > longest_ms {
        return Err(syn::Error::new_spanned(
            lit,
            format!(
                "the first wait of `backoff` ({first}) is longer than its longest wait \
                 ({longest}); the first comes first: write `{EXAMPLE}`"
            ),
        ));
    }
    Ok((
        millis_literal(first_ms, lit),
        millis_literal(longest_ms, lit),
    ))
}

/// `"5s"` in milliseconds: a whole number followed by `ms`, `s`, `m` or `h`, nothing else.
/// Errors are spanned on `lit`, the string that holds `text`.
fn duration(lit: &LitStr, text: &str, what: &str, example: &str) -> syn::Result<u64> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    if digits.is_empty() || unit_ms == 0 {
        let unit_advice = if digits.is_empty() || unit.is_empty() {
            String::new()
        } else if unit.trim() != unit {
            "; remove the spaces".to_owned()
        } else if unit.starts_with(['.', ',']) {
            "; the number must be whole: use a smaller unit, like `1500ms` for 1.5 s".to_owned()
        } else {
            format!("; {unit:?} is not a unit")
        };
        return Err(syn::Error::new_spanned(
            lit,
            format!(
                "invalid duration {text:?} for {what}{unit_advice}: {DURATION_FORM}: \
                 write `{example}`"
            ),
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit_ms))
        .ok_or_else(|| {
            syn::Error::new_spanned(
                lit,
                format!(
                    "the duration {text:?} for {what} is too long: it must be at most {} ms \
                     (about 584 million years): write `{example}`",
                    u64::MAX
                ),
            )
        })
}

/// Milliseconds as a `u64` literal on the user's string.
fn millis_literal(millis: u64, lit: &LitStr) -> LitInt {
    LitInt::new(&format!("{millis}u64"), lit.span())
}

/// A share from 0.0 to 1.0: a float literal (or the integer 0 or 1), as an `f64` literal.
fn share(value: &Expr, name: &str, example: &str) -> syn::Result<LitFloat> {
    let out_of_range = |spanned: &dyn ToTokens, shown: String| {
        syn::Error::new_spanned(
            spanned,
            format!("`{name}` is a share from 0.0 to 1.0, not {shown}: write `{example}`"),
        )
    };
    let wrong_type = |spanned: &dyn ToTokens| {
        syn::Error::new_spanned(
            spanned,
            format!("`{name}` takes a number from 0.0 to 1.0 (an `f64`): write `{example}`"),
        )
    };
    let lit = match value {
        Expr::Lit(ExprLit { lit, .. }) => lit,
        // `-0.5`: a literal, but below the range.
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if matches!(
            &**expr,
            Expr::Lit(ExprLit {
                lit: Lit::Float(_) | Lit::Int(_),
                ..
            })
        ) =>
        {
            return Err(out_of_range(value, written(value)));
        }
        _ => return Err(wrong_type(value)),
    };
    let (number, span) = match lit {
        Lit::Float(float) => {
            if !float.suffix().is_empty() && float.suffix() != "f64" {
                return Err(wrong_type(float));
            }
            let number: f64 = float.base10_parse()?;
            (number, float.span())
        }
        Lit::Int(int) if int.suffix().is_empty() => match int.base10_digits() {
            "0" => (0.0, int.span()),
            "1" => (1.0, int.span()),
            digits => return Err(out_of_range(int, digits.to_owned())),
        },
        other => return Err(wrong_type(other)),
    };
    if !(0.0..=1.0).contains(&number) {
        return Err(out_of_range(lit, number.to_string()));
    }
    // `{:?}` always writes a float: `1.0`, `0.2`, `1e-7`.
    Ok(LitFloat::new(&format!("{number:?}f64"), span))
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
        assert!(args.backoff.is_none() && args.jitter.is_none());
        assert!(args.timeout.is_none() && args.retry_through_broker.is_none());
    }

    #[test]
    fn reads_retry_options() {
        let args = parse(&quote!(
            destination = "orders",
            backoff = "100ms..10s",
            jitter = 0.2,
            timeout = "5s",
            retry = "broker"
        ))
        .unwrap();
        let (first, longest) = args.backoff.unwrap();
        assert_eq!(first.to_string(), "100u64");
        assert_eq!(longest.to_string(), "10000u64");
        assert_eq!(args.jitter.unwrap().to_string(), "0.2f64");
        assert_eq!(args.timeout.unwrap().to_string(), "5000u64");
        assert!(args.retry_through_broker.unwrap().value);

        let args = parse(&quote!(destination = "o", retry = "in_process", jitter = 0)).unwrap();
        assert!(!args.retry_through_broker.unwrap().value);
        assert_eq!(args.jitter.unwrap().to_string(), "0.0f64");
        let args = parse(&quote!(destination = "o", jitter = 1.0f64)).unwrap();
        assert_eq!(args.jitter.unwrap().to_string(), "1.0f64");
    }

    #[test]
    fn reads_batch_limits() {
        let args = parse(&quote!(destination = "o", batch = 100, batch_wait = "50ms")).unwrap();
        let (size, wait) = args.batch.unwrap();
        assert_eq!(size.to_string(), "100usize");
        assert_eq!(wait.unwrap().to_string(), "50u64");
        let args = parse(&quote!(
            destination = "o",
            batch = 1usize,
            batch_wait = "0ms"
        ))
        .unwrap();
        let (size, wait) = args.batch.unwrap();
        assert_eq!(size.to_string(), "1usize");
        assert_eq!(wait.unwrap().to_string(), "0u64");
        let args = parse(&quote!(batch = 8, destination = "o", retry = "in_process")).unwrap();
        let (size, wait) = args.batch.unwrap();
        assert_eq!(size.to_string(), "8usize");
        assert!(wait.is_none());
        assert!(parse(&quote!(destination = "o")).unwrap().batch.is_none());
        // With every argument a batch handler uses.
        let args = parse(&quote!(
            destination = "o",
            group = "g",
            batch = 8,
            batch_wait = "1s",
            max_attempts = 3,
            backoff = "1ms..1s",
            jitter = 0.1,
            timeout = "2s"
        ))
        .unwrap();
        assert!(args.batch.is_some() && args.timeout.is_some());
    }

    #[test]
    fn refuses_what_a_batch_handler_does_not_take() {
        for (tokens, expected) in [
            (quote!(destination = "o", batch = 0), "greater than 0"),
            (quote!(destination = "o", batch = "100"), "whole number"),
            (quote!(destination = "o", batch = 100u8), "is a `usize`"),
            (quote!(destination = "o", batch = -1), "whole number"),
            (quote!(destination = "o", batch), "write `batch = 100`"),
            (
                quote!(destination = "o", batch = 1, batch = 2),
                "given twice",
            ),
            (
                quote!(destination = "o", batch = 1, batch_wait = 50),
                "string literal",
            ),
            (
                quote!(destination = "o", batch = 1, batch_wait = "50"),
                "invalid duration \"50\" for `batch_wait`",
            ),
            (
                quote!(destination = "o", batch_wait = "50ms"),
                "`batch_wait` is how long a batch waits",
            ),
            (
                quote!(destination = "o", batch = 10, output = "p"),
                "publishes nothing, so it takes no `output`",
            ),
            (
                quote!(destination = "o", concurrency = 2, batch = 10),
                "takes no `concurrency`",
            ),
            (
                quote!(destination = "o", batch = 10, retry = "broker"),
                "cannot retry through the broker",
            ),
        ] {
            let error = parse(&tokens)
                .err()
                .unwrap_or_else(|| panic!("{tokens} parsed"));
            assert!(error.to_string().contains(expected), "{tokens}: {error}");
        }
    }

    #[test]
    fn reads_durations() {
        let ms = |text: &str| {
            let lit = LitStr::new(text, Span::call_site());
            duration(&lit, text, "`timeout`", "timeout = \"5s\"")
        };
        assert_eq!(ms("0ms").unwrap(), 0);
        assert_eq!(ms("7ms").unwrap(), 7);
        assert_eq!(ms("007s").unwrap(), 7_000);
        assert_eq!(ms("2m").unwrap(), 120_000);
        assert_eq!(ms("3h").unwrap(), 10_800_000);
        assert_eq!(ms(&format!("{}ms", u64::MAX)).unwrap(), u64::MAX);
        for bad in [
            "", "s", "5", "5 s", " 5s", "5s ", "1.5s", "-1s", "+1s", "5sec", "5us", "5M", "5d",
            "1_000ms", "5s5ms",
        ] {
            let error = ms(bad).expect_err(bad).to_string();
            assert!(error.contains("invalid duration"), "{bad:?}: {error}");
        }
        assert!(ms("5 s")
            .unwrap_err()
            .to_string()
            .contains("remove the spaces"));
        assert!(ms("5us")
            .unwrap_err()
            .to_string()
            .contains("\"us\" is not a unit"));
        for long in [
            format!("{}ms", u128::from(u64::MAX) + 1),
            format!("{}s", u64::MAX),
        ] {
            let error = ms(&long).expect_err(&long).to_string();
            assert!(error.contains("is too long"), "{long:?}: {error}");
        }
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
            (quote!(destination = "o", backoff = 100), "string literal"),
            (
                quote!(destination = "o", backoff = "10s"),
                "separated by `..`",
            ),
            (
                quote!(destination = "o", backoff = "100ms.."),
                "no longest wait",
            ),
            (
                quote!(destination = "o", backoff = "..10s"),
                "no first wait",
            ),
            (
                quote!(destination = "o", backoff = "100ms..10x"),
                "\"x\" is not a unit",
            ),
            (
                quote!(destination = "o", backoff = "1.5s..10s"),
                "the number must be whole",
            ),
            (
                quote!(destination = "o", backoff = "100ms .. 10s"),
                "remove the spaces",
            ),
            (
                quote!(destination = "o", backoff = "0ms..0s"),
                "longer than 0",
            ),
            (
                quote!(destination = "o", backoff = "10s..100ms"),
                "(10s) is longer than its longest wait (100ms)",
            ),
            (
                quote!(destination = "o", backoff = "1ms..99999999999999999999h"),
                "too long",
            ),
            (
                quote!(destination = "o", backoff = "1s..2s..3s"),
                "invalid duration \"2s..3s\"",
            ),
            (quote!(destination = "o", jitter = 1.5), "not 1.5"),
            (quote!(destination = "o", jitter = -0.2), "not -0.2"),
            (quote!(destination = "o", jitter = 2), "not 2"),
            (quote!(destination = "o", jitter = "0.2"), "takes a number"),
            (quote!(destination = "o", jitter = 0.2f32), "an `f64`"),
            (quote!(destination = "o", jitter = 1u8), "an `f64`"),
            (quote!(destination = "o", timeout = 5), "string literal"),
            (quote!(destination = "o", timeout = "0s"), "longer than 0"),
            (quote!(destination = "o", timeout = "5"), "invalid duration"),
            (
                quote!(destination = "o", timeout = "5s", timeout = "6s"),
                "given twice",
            ),
            (
                quote!(destination = "o", retry = "kafka"),
                "\"broker\" (wait between attempts",
            ),
            (quote!(destination = "o", retry = true), "string literal"),
            (
                quote!(destination = "o", backoff),
                "write `backoff = \"100ms..10s\"`",
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
