//! Logging: `tracing` to stderr, text or JSON (`log.format`; `json` in
//! `config/production.toml`, so `WALLETD_ENV=production` logs JSON; `WALLETD__LOG__FORMAT`
//! overrides), levels from `RUST_LOG` (default `info`). Text is coloured only on a terminal.
//!
//! JSON is one object per line with the event's fields at the top level (`timestamp`, `level`,
//! `target`, `message`, then the fields, e.g. the request line's `request_id`, `latency_us`)
//! and, for lines logged while a request is handled, `span` holding its `request_id`.
//!
//! ERROR is for walletd's own failures. A client's garbage is not one: actix-http logs a
//! connection that ended in a parse or I/O error ("stream error: …") at ERROR, before any
//! request (or request id) exists; [`DemoteClientErrors`] logs it at WARN instead.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Used when `RUST_LOG` is unset or unparsable.
const DEFAULT_FILTER: &str = "info";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    // A second init (tests spawn many apps in one process) is not an error worth reporting.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(DemoteClientErrors)
        .with(text)
        .with(json)
        .try_init();
}

/// Where actix-http logs a connection's parse or I/O error.
const ACTIX_DISPATCHER: &str = "actix_http::h1::dispatcher";
/// How it starts that line.
const STREAM_ERROR: &str = "stream error: ";

/// Replaces actix-http's ERROR line for a connection that ended in a client's parse or I/O
/// error with a WARN line of walletd's own (the original is dropped before any layer writes
/// it). Every other event passes untouched.
struct DemoteClientErrors;

impl<S: Subscriber> Layer<S> for DemoteClientErrors {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::ERROR || metadata.target() != ACTIX_DISPATCHER {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let Some(cause) = message.0.strip_prefix(STREAM_ERROR) else {
            return true;
        };
        // Dispatched like any event (a subscriber may log from here: walletd's is global).
        tracing::warn!(
            target: "walletd::http",
            error = cause,
            "a client connection ended in a malformed request or an I/O error (no request id: \
             it never became a request)"
        );
        false
    }
}

/// An event's `message` field, as text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
