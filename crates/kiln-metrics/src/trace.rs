//! W3C trace context for the spans of requests and job attempts.
//!
//! Without an exporter a span only carries the trace id it was given as a field (from the
//! client's `traceparent`, stored with the job for its attempts). An exporter (the `kiln`
//! binary's `otlp` feature) installs a [`Tracer`] once at start-up: then a request span
//! continues the client's trace (or starts one), a submitted job remembers the request's
//! span, and each attempt's span is a child of it. The hook keeps the HTTP layer and the
//! worker free of any OpenTelemetry dependency.

use std::sync::OnceLock;

use tracing::Span;

/// What an exporter does for Kiln's spans.
pub trait Tracer: Send + Sync + 'static {
    /// Makes `span` (created, not yet entered) a child of the remote span `parent_span_id`
    /// in the trace `trace_id` (hex ids, as a `traceparent` carries them).
    fn adopt(&self, span: &Span, trace_id: &str, parent_span_id: &str);
    /// The trace id and span id (hex) of `span` in its trace.
    fn ids(&self, span: &Span) -> Option<(String, String)>;
}

static TRACER: OnceLock<Box<dyn Tracer>> = OnceLock::new();

/// Installs the process's tracer; false if one was installed before.
pub fn install(tracer: Box<dyn Tracer>) -> bool {
    TRACER.set(tracer).is_ok()
}

/// The installed tracer, if an exporter runs.
pub fn tracer() -> Option<&'static dyn Tracer> {
    TRACER.get().map(|t| &**t)
}

/// The trace id and parent span id of a W3C `traceparent` header (`00-<32 hex trace
/// id>-<16 hex parent id>-<2 hex flags>`), if it is well formed and the ids are not all
/// zeros; anything else is ignored, as the specification asks.
pub fn traceparent(header: &str) -> Option<(&str, &str)> {
    let mut parts = header.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some((trace, parent))
}

/// Whether `s` is `len` lower-case hex digits.
fn hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::traceparent;

    #[test]
    fn traceparent_gives_its_ids_only_when_well_formed() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = "00f067aa0ba902b7";
        assert_eq!(
            traceparent(&format!("00-{trace}-{parent}-01")),
            Some((trace, parent))
        );
        // A later version may add fields after the flags.
        assert_eq!(
            traceparent(&format!("01-{trace}-{parent}-01-extra")),
            Some((trace, parent))
        );
        for bad in [
            "",
            "00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // invalid version
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  // short parent id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 has 4 fields
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
    }
}
