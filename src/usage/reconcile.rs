//! Reconciliation of AssemblyAI streaming seconds: for every session the ledger recorded, the
//! seconds AssemblyAI reported in its `Termination` (what it bills) against the seconds the
//! bridge measured itself between `Begin` and the close. A difference above
//! `USAGE_RECONCILE_DRIFT_SECS`, or a session AssemblyAI never reported, is drift: a row in
//! `usage_drift`, a WARN log line and `usage_drift_total` for operators (docs/USAGE.md).

use crate::db::{DbError, GenericClient};
use crate::ids::CallId;

/// Sessions looked at per run: those recorded in this window (older ones were looked at).
const WINDOW_HOURS: i32 = 48;

/// Records drift for sessions not yet reported; returns how many were found.
pub async fn run(client: &impl GenericClient, threshold_secs: f64) -> Result<u64, DbError> {
    let found = client
        .query(
            "insert into usage_drift (organisation_id, call_id, vendor, session_id, ledger_seconds, reported_seconds)
             select l.organisation_id, l.call_id, 'assemblyai', l.metadata->>'session_id',
                    (l.metadata->>'measured_seconds')::numeric,
                    (l.metadata->>'reported_seconds')::numeric
             from usage_ledger l
             where l.vendor = 'assemblyai' and l.unit = 'streaming_seconds'
               and l.recorded_at > now() - make_interval(hours => $2)
               and l.metadata ? 'session_id' and jsonb_typeof(l.metadata->'measured_seconds') = 'number'
               and (jsonb_typeof(l.metadata->'reported_seconds') is distinct from 'number'
                    or abs((l.metadata->>'reported_seconds')::float8
                           - (l.metadata->>'measured_seconds')::float8) > $1)
             on conflict (vendor, session_id) do nothing
             returning session_id, call_id, ledger_seconds::float8 as measured,
                       reported_seconds::float8 as reported",
            &[&threshold_secs, &WINDOW_HOURS],
        )
        .await?;
    for row in &found {
        let session_id: String = row.get("session_id");
        let call_id: Option<CallId> = row.get("call_id");
        let measured: f64 = row.get("measured");
        let reported: Option<f64> = row.get("reported");
        tracing::warn!(
            %session_id, ?call_id, measured, ?reported, threshold_secs,
            "AssemblyAI streaming seconds drift from what the bridge measured"
        );
    }
    if !found.is_empty() {
        metrics::counter!("usage_drift_total", "vendor" => "assemblyai")
            .increment(found.len() as u64);
    }
    Ok(found.len() as u64)
}
