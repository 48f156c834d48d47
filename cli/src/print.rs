//! How messages look on the terminal: deliveries, dead letters, the dead-letter table.

use event_binder::{header, time_from_millis, Message};
use std::fmt::Display;
use std::io::{self, Write};
use std::time::SystemTime;

/// A line for the user on stderr, apart from the output on stdout that scripts read.
pub(crate) fn note(text: impl Display) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// The command's output: stdout, flushed after each item so a pipe sees it at once.
pub(crate) struct Out<W: Write = io::Stdout> {
    out: W,
}

impl Out {
    pub(crate) fn stdout() -> Self {
        Out { out: io::stdout() }
    }
}

/// The widest an error gets in the dead-letter table; `show` prints it whole.
const ERROR_WIDTH: usize = 60;

impl<W: Write> Out<W> {
    pub(crate) fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()
    }

    /// A delivery: a line of what it is, its headers, its payload.
    pub(crate) fn delivery(&mut self, message: &Message, attempt: u32) -> io::Result<()> {
        writeln!(
            self.out,
            "--- id={} key={} attempt={attempt} time={}",
            message.id(),
            message.key().unwrap_or("-"),
            rfc3339(message.timestamp()),
        )?;
        self.body(message)
    }

    /// A dead letter: what it is, why it failed, its headers, its payload.
    pub(crate) fn dead_letter(&mut self, message: &Message) -> io::Result<()> {
        let headers = message.headers();
        writeln!(self.out, "id:       {}", message.id())?;
        writeln!(self.out, "key:      {}", message.key().unwrap_or("-"))?;
        writeln!(self.out, "sent:     {}", rfc3339(message.timestamp()))?;
        writeln!(self.out, "failed:   {}", failed_at(message))?;
        writeln!(
            self.out,
            "attempts: {}",
            headers.get(header::DEAD_LETTER_ATTEMPTS).unwrap_or("-")
        )?;
        writeln!(
            self.out,
            "error:    {}",
            headers.get(header::DEAD_LETTER_ERROR).unwrap_or("-")
        )?;
        self.body(message)
    }

    /// The headers, sorted, then the payload: pretty JSON, text, or its size.
    fn body(&mut self, message: &Message) -> io::Result<()> {
        let mut headers: Vec<(&str, &str)> = message.headers().iter().collect();
        headers.sort_unstable();
        for (name, value) in headers {
            writeln!(self.out, "{name}: {value}")?;
        }
        let payload = message.payload();
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(json) => {
                let pretty = serde_json::to_string_pretty(&json).map_err(io::Error::other)?;
                writeln!(self.out, "{pretty}")?;
            }
            Err(_) => match std::str::from_utf8(payload) {
                Ok(text) => writeln!(self.out, "{text}")?,
                Err(_) => writeln!(self.out, "<{} bytes, not UTF-8>", payload.len())?,
            },
        }
        self.out.flush()
    }

    /// One row per dead letter: id, key, attempts, redrives, when it failed, why.
    pub(crate) fn dead_letter_table(&mut self, dead_letters: &[Message]) -> io::Result<()> {
        let head = ["ID", "KEY", "ATTEMPTS", "REDRIVES", "FAILED AT", "ERROR"];
        let rows: Vec<[String; 6]> = dead_letters
            .iter()
            .map(|message| {
                let headers = message.headers();
                let error = headers
                    .get(header::DEAD_LETTER_ERROR)
                    .unwrap_or("-")
                    .replace(['\n', '\r'], " ");
                [
                    message.id().to_owned(),
                    message.key().unwrap_or("-").to_owned(),
                    headers
                        .get(header::DEAD_LETTER_ATTEMPTS)
                        .unwrap_or("-")
                        .to_owned(),
                    headers.get(header::REDRIVE_COUNT).unwrap_or("0").to_owned(),
                    failed_at(message),
                    shortened(&error, ERROR_WIDTH),
                ]
            })
            .collect();
        let mut widths = head.map(|title| title.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        self.row(&head.map(str::to_owned), &widths)?;
        for row in &rows {
            self.row(row, &widths)?;
        }
        self.out.flush()
    }

    fn row(&mut self, cells: &[String; 6], widths: &[usize; 6]) -> io::Result<()> {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(self.out, "{}", line.join("  ").trim_end())
    }
}

/// When the dead letter was dead-lettered, as RFC 3339 (UTC).
fn failed_at(message: &Message) -> String {
    message
        .headers()
        .get(header::DEAD_LETTER_TIME)
        .and_then(|millis| millis.parse().ok())
        .map_or_else(
            || "-".to_owned(),
            |millis| rfc3339(time_from_millis(millis)),
        )
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// At most `width` characters, the cut marked.
fn shortened(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(print: impl FnOnce(&mut Out<Vec<u8>>) -> io::Result<()>) -> String {
        let mut out = Out { out: Vec::new() };
        print(&mut out).expect("writing to memory");
        String::from_utf8(out.out).expect("UTF-8")
    }

    fn dead_letter(id: &str, error: &str) -> Message {
        Message::new_with_id(id, r#"{"order_id":7}"#)
            .with_key("order-7")
            .with_header(header::DEAD_LETTER_ERROR, error)
            .with_header(header::DEAD_LETTER_ATTEMPTS, "3")
            .with_header(header::DEAD_LETTER_TIME, "1780000000000")
    }

    #[test]
    fn the_table_lines_up_its_columns_and_shortens_long_errors() {
        let long = format!("line one\nline two {}", "x".repeat(100));
        let table = printed(|out| {
            out.dead_letter_table(&[dead_letter("a", "boom"), dead_letter("bbbbbbbb", &long)])
        });
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let error_column = lines[0].find("ERROR").expect("an ERROR column");
        assert_eq!(lines[1].find("boom"), Some(error_column), "{table}");
        assert!(lines[2].contains("line one line two"), "{table}");
        assert!(lines[2].ends_with('…'), "{table}");
        assert!(
            lines[1].contains("2026-05-28T20:26:40.000Z"),
            "the failure time as RFC 3339: {table}"
        );
    }

    #[test]
    fn a_delivery_shows_its_headers_sorted_and_its_json_pretty() {
        let message = Message::new(r#"{"order_id":7}"#)
            .with_key("order-7")
            .with_header("tenant", "acme")
            .with_header("b-first", "1");
        let shown = printed(|out| out.delivery(&message, 2));
        assert!(shown.starts_with(&format!(
            "--- id={} key=order-7 attempt=2 time=",
            message.id()
        )));
        let tenant = shown.find("tenant: acme").expect("the header");
        assert!(
            shown.find("b-first: 1").expect("the header") < tenant,
            "{shown}"
        );
        assert!(shown.contains("{\n  \"order_id\": 7\n}"), "{shown}");
    }

    #[test]
    fn a_payload_that_is_not_json_shows_as_text_or_its_size() {
        let text = printed(|out| out.delivery(&Message::new("plain words"), 1));
        assert!(text.ends_with("plain words\n"), "{text}");
        let binary = printed(|out| out.delivery(&Message::new(vec![0xff, 0xfe]), 1));
        assert!(binary.ends_with("<2 bytes, not UTF-8>\n"), "{binary}");
    }
}
