//! The production job registry: one entry (and one file) per job kind.

use super::Registry;

pub fn registry() -> Registry {
    Registry::default()
        .register("telnyx.event", super::telnyx_event::run)
        .register(
            super::call_max_duration::KIND,
            super::call_max_duration::run,
        )
        .register(super::recording_import::KIND, super::recording_import::run)
        .register(
            super::recording_import::TRANSCRIBE_KIND,
            super::transcript_fetch::transcribe,
        )
        .register(
            super::transcript_fetch::FETCH_KIND,
            super::transcript_fetch::fetch,
        )
}
