//! Logging of both binaries, on standard error: text lines, or one JSON object a line
//! (`--log-format json`) for a log shipper.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. An invalid filter falls back to `info`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Each event's fields at the top level of its object, next to `timestamp`, `level`
        // and `target`: what log shippers index without configuration.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
