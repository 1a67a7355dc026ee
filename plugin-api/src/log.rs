//! Sends the plugin's `tracing` events to the host's log, where they appear with the plugin's
//! name and version. The plugin has its own copy of `tracing`'s statics, so it needs its own
//! subscriber: a layer that formats each event and hands it to the host's log sink.

use std::fmt::Write as _;

use agent_plugin_abi::{__export::RStr, HostServices};
use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

struct HostLog(HostServices);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

impl<S: Subscriber> Layer<S> for HostLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let meta = event.metadata();
        (self.0.log)(self.0.ctx, level_number(meta.level()), RStr::from(meta.target()), RStr::from(fields.0.as_str()));
    }
}

/// Installs the bridge as this library's global subscriber (once per library).
pub(crate) fn install(host: HostServices, max_level: u32) {
    let filter = match max_level {
        0 | 3 => tracing::level_filters::LevelFilter::INFO,
        1 => tracing::level_filters::LevelFilter::ERROR,
        2 => tracing::level_filters::LevelFilter::WARN,
        4 => tracing::level_filters::LevelFilter::DEBUG,
        _ => tracing::level_filters::LevelFilter::TRACE,
    };
    let subscriber = tracing_subscriber::registry().with(HostLog(host).with_filter(filter));
    // Fails only if set already, which `init` (called once per library) rules out.
    let _ = tracing::subscriber::set_global_default(subscriber);
}
