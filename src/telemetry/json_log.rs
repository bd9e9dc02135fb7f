//! The JSON log line, written directly.
//!
//! The same line `tracing_subscriber`'s `json()` format writes (with
//! `with_current_span(true)`, the span list, no target): `timestamp`,
//! `level`, `fields`, `span`, `spans`, in that order, with serde_json's
//! escaping. That format re-parses each span's stored fields into a
//! `serde_json::Value` and serializes them again for `span` and again for
//! `spans`, and checks every serializer write for UTF-8: about 26 k
//! instructions per line, a third of what a fresh token cost besides its
//! signature (bench/PROFILE.md). Here the stored fields (already JSON, from
//! [`JsonSpanFields`]) are copied as they are, and values are escaped
//! straight into the line.
//!
//! [`JsonSpanFields`] stores a span's fields as `JsonFields` does (a JSON
//! object, keys sorted), but writes the usual few directly instead of
//! through a `serde_json::Value` map: a request span costs 0.6 k
//! instructions instead of 3.2 k.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The event format (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // (Events forwarded from the `log` crate come from one callsite per
        // level, so their metadata has the right level without normalizing.)
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_str("\",\"fields\":{")?;
        let mut fields = Fields {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_char('}')?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = current {
            w.write_str(",\"span\":")?;
            write_span::<_, N>(&mut w, &span)?;
            w.write_str(",\"spans\":[")?;
            if let Some(leaf) = ctx.lookup_current() {
                for (i, span) in leaf.scope().from_root().enumerate() {
                    if i > 0 {
                        w.write_char(',')?;
                    }
                    write_span::<_, N>(&mut w, &span)?;
                }
            }
            w.write_char(']')?;
        }
        w.write_str("}\n")
    }
}

/// `{<the span's fields>,"name":"<its name>"}`.
fn write_span<S, N>(w: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    let ext = span.extensions();
    let stored = ext
        .get::<FormattedFields<N>>()
        .map_or("", |f| f.fields.as_str());
    // `JsonFields` stores a JSON object with its keys sorted, exactly as the
    // stock format re-serializes it: copy its members as they are.
    let members = stored
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or("");
    w.write_char('{')?;
    w.write_str(members)?;
    if !members.is_empty() {
        w.write_char(',')?;
    }
    w.write_str("\"name\":")?;
    write_str(w, span.metadata().name())?;
    w.write_char('}')
}

/// Writes an event's fields as JSON object members, typed as
/// `tracing_serde` types them: booleans and numbers as such, strings as
/// strings, everything else as its `Debug` text.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.w.write_char(',')?;
            }
            write_str(self.w, field.name())?;
            self.w.write_char(':')?;
            value(self.w)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's number format (and `null` for NaN and infinities).
        self.member(field, |w| {
            w.write_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?)
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_str(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A span's fields as a JSON object with sorted keys, exactly as
/// [`JsonFields`] stores them (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut out = String::new();
        let mut direct = SpanFields {
            w: Writer::new(&mut out),
            last: None,
            fallback: false,
        };
        direct.w.write_char('{')?;
        fields.record(&mut direct);
        if direct.fallback {
            return JsonFields::new().format_fields(w, fields);
        }
        out.push('}');
        w.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        // Recording into a live span is rare: merge as `JsonFields` does.
        let mut stock = FormattedFields::<JsonFields>::new(std::mem::take(&mut current.fields));
        let merged = JsonFields::new().add_fields(&mut stock, fields);
        current.fields = stock.fields;
        merged
    }
}

/// Writes fields whose names come in strictly increasing order and whose
/// values are strings, integers, booleans or `Debug` text; anything else
/// (out of order, repeated, `log.` or `r#` names, floats, bytes) asks for
/// the stock formatter.
struct SpanFields<'w> {
    w: Writer<'w>,
    last: Option<&'static str>,
    fallback: bool,
}

impl SpanFields<'_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        let name = field.name();
        if self.fallback
            || self.last.is_some_and(|last| last >= name)
            || name.starts_with("log.")
            || name.starts_with("r#")
        {
            self.fallback = true;
            return;
        }
        let comma = if self.last.is_some() { "," } else { "" };
        self.last = Some(name);
        let w = &mut self.w;
        let written = (|| {
            w.write_str(comma)?;
            write_str(w, name)?;
            w.write_char(':')?;
            value(w)
        })();
        self.fallback |= written.is_err();
    }
}

impl Visit for SpanFields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, _: &Field, _: f64) {
        self.fallback = true;
    }

    fn record_bytes(&mut self, _: &Field, _: &[u8]) {
        self.fallback = true;
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_str(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `s` as a JSON string.
fn write_str(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what passes through as serde_json does inside a string: `"`,
/// `\`, and the control characters (`\b \t \n \f \r` by name, the others
/// as `\u00xx`).
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most values (ids, names, scopes) need no escaping at all.
        if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let named = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\x08' => "\\b",
                b'\t' => "\\t",
                b'\n' => "\\n",
                b'\x0c' => "\\f",
                b'\r' => "\\r",
                0..0x20 => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if named.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(named)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Odd;

    fn events() {
        tracing::info!("outside any span");
        let span = tracing::info_span!("request", id = "req-\"1\"\n");
        let _e = span.enter();
        tracing::info!(
            jti = %"abc",
            sub = "app/web",
            exp = 17u64,
            neg = -3i64,
            ok = true,
            ratio = 0.25f64,
            nan = f64::NAN,
            big = 1u128 << 100,
            odd = ?Odd,
            ctl = "\u{1}\u{8}\t\u{c}\r\u{1f}\u{7f}é\\",
            "token issued"
        );
        let inner = tracing::warn_span!("inner", b = 2u64, a = "x", c = ?Odd, d = -1i64);
        inner.in_scope(|| {
            tracing::warn!(error = %std::io::Error::other("no \"route\""), "failed: {}", 42);
            tracing::error!(parent: None, "explicit root");
        });
        let empty = tracing::info_span!("empty");
        empty.in_scope(|| tracing::debug!(x = 1u64));
        let typed = tracing::info_span!("typed", a = 1.5f64, b = true, c = ?Odd, d = "s\"t");
        typed.in_scope(|| tracing::info!("typed"));
        let recorded = tracing::info_span!("recorded", a = 1u64, z = tracing::field::Empty);
        recorded.record("z", "late");
        recorded.in_scope(|| tracing::info!("recorded"));
    }

    /// The timestamp blanked: it is the one part that differs between runs.
    fn lines(buf: &Buf) -> Vec<String> {
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let at = l.find("\"timestamp\":\"").unwrap() + 13;
                let end = at + l[at..].find('"').unwrap();
                format!("{}{}", &l[..at], &l[end..])
            })
            .collect()
    }

    #[test]
    fn lines_are_the_stock_json_format_byte_for_byte() {
        let stock = Buf::default();
        let ours = Buf::default();
        let sub = |w: Buf| {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_target(false)
                .with_writer(w)
        };
        tracing::subscriber::with_default(
            sub(stock.clone()).json().with_current_span(true).finish(),
            events,
        );
        tracing::subscriber::with_default(
            sub(ours.clone())
                .fmt_fields(JsonSpanFields)
                .event_format(JsonLine)
                .finish(),
            events,
        );
        let (stock, ours) = (lines(&stock), lines(&ours));
        assert_eq!(stock.len(), 7);
        for (s, o) in stock.iter().zip(&ours) {
            assert_eq!(o, s);
        }
        assert_eq!(ours.len(), stock.len());
    }
}
