//! The production job registry: one entry (and one file) per job kind.

use super::Registry;

pub fn registry() -> Registry {
    Registry::default().register("telnyx.event", super::telnyx_event::run)
}
