//! The JSON log line, formatted directly: one line per event, written with one `write` from a
//! buffer each thread reuses.
//!
//! The shape is what `tracing_subscriber`'s JSON formatter printed with `flatten_event(true)`
//! and `with_span_list(false)`: `timestamp` (RFC 3339, microseconds, UTC), `level`, the event's
//! fields (`message` among them), `target`, and `span`: the fields and `name` of the request's
//! span (an RPC's, the only spans logs are given: [`super::init`]) when the event is inside
//! one. That formatter cost about 63,000 instructions per login line (serde_json's serializer
//! over a map of the fields, the span's fields stored as JSON and parsed back, the span list);
//! this one writes the same JSON straight into the buffer: a span's fields are rendered once,
//! when it opens, and copied into each line inside it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The layer that prints each event as one JSON line to `writer`.
pub struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

/// A span's fields as a JSON object's members (`"k":v,` each), rendered when it opens and
/// kept in its extensions; `name` is added when a line prints it.
struct SpanFields(String);

impl<S, W> tracing_subscriber::Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Members(String::with_capacity(256));
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.0));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            let mut more = Members(std::mem::take(fields));
            values.record(&mut more);
            *fields = more.0;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
        }
        // The thread's buffer; a buffer of its own while the thread's locals are being
        // destroyed (an event from a destructor at thread exit), or should the buffer be in use.
        let reused = BUFFER.try_with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut line) => {
                self.write_line(&mut line, event, &ctx);
                // A rare huge line does not keep its buffer for the thread's life.
                if line.capacity() > 16 * 1024 {
                    *line = String::new();
                }
                true
            }
            Err(_) => false,
        });
        if reused != Ok(true) {
            self.write_line(&mut String::new(), event, &ctx);
        }
    }
}

impl<W> JsonLines<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    /// Formats `event` into `line` (cleared first) and writes it with one `write`.
    fn write_line<S>(&self, line: &mut String, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        line.clear();
        let metadata = event.metadata();
        line.push_str("{\"timestamp\":\"");
        timestamp(line, time::OffsetDateTime::now_utc());
        line.push_str("\",\"level\":\"");
        line.push_str(metadata.level().as_str());
        line.push_str("\",");
        let mut members = Members(std::mem::take(line));
        event.record(&mut members);
        *line = members.0;
        line.push_str("\"target\":");
        string(line, metadata.target());
        if let Some(span) = ctx.event_span(event) {
            let extensions = span.extensions();
            if let Some(SpanFields(fields)) = extensions.get::<SpanFields>() {
                line.push_str(",\"span\":{");
                line.push_str(fields);
                line.push_str("\"name\":");
                string(line, span.name());
                line.push('}');
            }
        }
        line.push_str("}\n");
        // A log line that cannot be written is lost, as with any logger: there is nowhere else
        // to say so.
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

/// JSON object members, `"name":value,` each, appended to the string.
struct Members(String);

impl Members {
    #[inline]
    fn key(&mut self, field: &Field) {
        self.0.push('"');
        escape(&mut self.0, field.name());
        self.0.push_str("\":");
    }
}

impl Visit for Members {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.0.push('"');
        escape(&mut self.0, value);
        self.0.push_str("\",");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true," } else { "false," });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
        self.0.push(',');
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
        self.0.push(',');
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            // As serde_json printed it (the shortest text that reads back the same number).
            self.0.push_str(ryu::Buffer::new().format_finite(value));
            self.0.push(',');
        } else {
            // JSON has no NaN or infinity; serde_json printed null.
            self.0.push_str("null,");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaped(&mut self.0), "{value}");
        self.0.push_str("\",");
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaped(&mut self.0), "{value:?}");
        self.0.push_str("\",");
    }
}

/// `value` as a JSON string.
fn string(out: &mut String, value: &str) {
    out.push('"');
    escape(out, value);
    out.push('"');
}

/// Appends `value` with JSON's escapes: `"`, `\` and the control characters; the rest as it
/// is (UTF-8 needs no escaping).
#[inline]
fn escape(out: &mut String, value: &str) {
    // Almost every string logged needs no escape: a check eight bytes at a time, then one copy.
    if needs_escape(value.as_bytes()) {
        escape_runs(out, value);
    } else {
        out.push_str(value);
    }
}

/// [`escape`] of a string that needs it: the runs between the characters to escape as they are.
fn escape_runs(out: &mut String, value: &str) {
    let mut run = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[run..at]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escaped);
        }
        run = at + 1;
    }
    out.push_str(&value[run..]);
}

/// Whether any byte is `"`, `\` or below 0x20, eight at a time: for a word `w`, `(w - n·ONES) &
/// !w & HIGHS` is non-zero exactly when some byte of `w` is below `n` (n ≤ 0x80), and a byte
/// equal to `c` is a zero byte of `w ^ c·ONES`.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS;
    let (words, rest) = bytes.as_chunks::<8>();
    for word in words {
        let w = u64::from_le_bytes(*word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        if below(w, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A `fmt::Write` that escapes what is written into a JSON string.
struct Escaped<'a>(&'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

/// `2026-12-07T02:35:20.123456Z`: RFC 3339 in UTC with microseconds, as before.
fn timestamp(out: &mut String, now: time::OffsetDateTime) {
    fn digits(out: &mut String, value: u32, width: u32) {
        let mut scale = 10u32.pow(width.saturating_sub(1));
        while scale > 0 {
            out.push(char::from(b'0' + ((value / scale) % 10) as u8));
            scale /= 10;
        }
    }
    digits(out, u32::try_from(now.year()).unwrap_or(0), 4);
    out.push('-');
    digits(out, u32::from(u8::from(now.month())), 2);
    out.push('-');
    digits(out, u32::from(now.day()), 2);
    out.push('T');
    digits(out, u32::from(now.hour()), 2);
    out.push(':');
    digits(out, u32::from(now.minute()), 2);
    out.push(':');
    digits(out, u32::from(now.second()), 2);
    out.push('.');
    digits(out, now.microsecond(), 6);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Lines written, for the tests.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut all) = self.0.lock() {
                all.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    fn logged(work: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(lines.clone()));
        tracing::subscriber::with_default(subscriber, work);
        let text = String::from_utf8(lines.0.lock().map(|l| l.clone()).unwrap_or_default());
        let text = text.unwrap_or_else(|e| panic!("not UTF-8: {e}"));
        assert!(text.ends_with('\n'), "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    #[test]
    fn a_line_holds_the_fields_the_target_and_its_span() {
        let lines = logged(|| {
            let span = tracing::info_span!("rpc", rpc.system = "grpc", n = 3u64);
            let _entered = span.enter();
            span.record("n", 4u64);
            tracing::info!(
                request_id = "r1",
                duration_ms = 1.5,
                ok = true,
                delta = -2i64,
                nan = f64::NAN,
                "authentication"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        let keys: Vec<&str> = line
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "delta",
                "duration_ms",
                "level",
                "message",
                "nan",
                "ok",
                "request_id",
                "span",
                "target",
                "timestamp"
            ]
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "authentication");
        assert_eq!(line["request_id"], "r1");
        assert_eq!(line["duration_ms"], 1.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["delta"], -2);
        assert!(line["nan"].is_null());
        assert_eq!(line["target"], module_path!());
        assert_eq!(
            line["span"],
            serde_json::json!({"name": "rpc", "rpc.system": "grpc", "n": 4}),
            "a recorded value comes after the first, and is the one read"
        );
        let stamp = line["timestamp"].as_str().unwrap_or_default();
        let parsed =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339);
        assert!(parsed.is_ok(), "{stamp}");
        assert_eq!((stamp.len(), stamp.ends_with('Z')), (27, true), "{stamp}");
    }

    #[test]
    fn strings_are_escaped_and_read_back_as_written() {
        let hostile = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é ✓";
        let lines = logged(|| {
            tracing::warn!(text = hostile, debug = ?hostile, "and {} in the message", hostile);
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["text"], hostile);
        assert_eq!(lines[0]["debug"], format!("{hostile:?}"));
        assert_eq!(lines[0]["message"], format!("and {hostile} in the message"));
        assert!(lines[0].get("span").is_none(), "no span, no member");
    }

    #[test]
    fn the_word_check_finds_every_byte_to_escape_at_every_position() {
        for length in 0..20 {
            let plain = "a".repeat(length);
            assert!(!needs_escape(plain.as_bytes()), "{plain:?}");
            for at in 0..length {
                for byte in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut text = plain.clone().into_bytes();
                    text[at] = byte;
                    assert!(needs_escape(&text), "{byte:#x} at {at} of {length}");
                }
                // Neighbours of the escaped bytes, and UTF-8's high bytes, are not.
                for byte in [0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xa2, 0xdc, 0xff] {
                    let mut text = plain.clone().into_bytes();
                    text[at] = byte;
                    assert!(!needs_escape(&text), "{byte:#x} at {at} of {length}");
                }
            }
        }
    }

    #[test]
    fn a_value_that_logs_while_it_is_formatted_leaves_the_line_whole() {
        struct Logs;
        impl std::fmt::Debug for Logs {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                tracing::info!(inner = true, "from inside");
                f.write_str("outer value")
            }
        }
        let lines = logged(|| tracing::info!(value = ?Logs, "outside"));
        // tracing does not dispatch an event from inside a subscriber: the inner one is
        // dropped, and the outer line is whole.
        let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
        assert_eq!(messages, ["outside"]);
        assert_eq!(lines[0]["value"], "outer value");
    }

    #[test]
    fn timestamps_are_padded() {
        let mut out = String::new();
        let at = time::macros::datetime!(0987-01-02 03:04:05.000_006 UTC);
        timestamp(&mut out, at);
        assert_eq!(out, "0987-01-02T03:04:05.000006Z");
    }
}
