//! The production job registry: one entry (and one file) per job kind, each named by its
//! typed payload (`queue::JobKind`).

use super::Registry;
use crate::calls::guard::MaxDurationJob;
use crate::inbox::{AssemblyAiEventJob, TelnyxEventJob};

pub fn registry() -> Registry {
    Registry::default()
        .job::<TelnyxEventJob, _, _>(super::telnyx_event::run)
        .job::<MaxDurationJob, _, _>(super::call_max_duration::run)
        .job::<super::recording_import::RecordingImportJob, _, _>(super::recording_import::run)
        .job::<super::transcript_fetch::TranscribeJob, _, _>(super::transcript_fetch::transcribe)
        .job::<AssemblyAiEventJob, _, _>(super::transcript_fetch::fetch)
}
