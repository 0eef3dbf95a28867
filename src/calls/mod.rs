//! Calls: the row per call, its forward-only state machine fed by Telnyx events, phone
//! numbers, and the queries the API uses. No HTTP here.
//!
//! Out-of-order and duplicate events converge: statuses are ranked and only move forward
//! (`call_status_rank` in SQL), timestamps are set once, `hangup` is terminal, and the
//! stream state is last-writer-wins by `occurred_at`.

pub mod destinations;
pub mod dial;
pub mod guard;
pub mod interpreted;
pub mod legs;
pub mod lines;
pub mod provisioning;
pub mod stream_token;

use crate::db::GenericClient;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ids::{CallId, OrgId};

use crate::db::DbError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Created,
    Dialing,
    Initiated,
    Answered,
    Ended,
    Failed,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Created => "created",
            CallStatus::Dialing => "dialing",
            CallStatus::Initiated => "initiated",
            CallStatus::Answered => "answered",
            CallStatus::Ended => "ended",
            CallStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "created" => CallStatus::Created,
            "dialing" => CallStatus::Dialing,
            "initiated" => CallStatus::Initiated,
            "answered" => CallStatus::Answered,
            "ended" => CallStatus::Ended,
            "failed" => CallStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, CallStatus::Ended | CallStatus::Failed)
    }
}

crate::db::text_enum!(CallStatus);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Call {
    #[schema(value_type = Uuid)]
    pub id: CallId,
    #[schema(value_type = Uuid)]
    pub organisation_id: OrgId,
    /// `outbound` or `inbound`.
    pub direction: String,
    pub from: String,
    pub to: String,
    pub source_language: Option<String>,
    pub target_language: Option<String>,
    pub voice_id: Option<String>,
    pub record: bool,
    pub status: CallStatus,
    pub stream_state: Option<String>,
    pub hangup_cause: Option<String>,
    pub hangup_source: Option<String>,
    pub sip_hangup_cause: Option<String>,
    pub failure_reason: Option<String>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub initiated_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Two legs (agent and remote), each hearing the other translated; false for a one-leg
    /// call, where translations play back into the one leg.
    pub interpreted: bool,
    /// `off`, `ducked` or `full`: whether a party also hears the other's original voice.
    pub original_audio: String,
    /// A call that came in on an inbound line: the line's phone number id.
    pub line_number_id: Option<Uuid>,
    /// How a line's call turned out: `connected`, `agent_no_answer`, `agent_failed` (the
    /// agent could not be dialed) or `caller_abandoned` (the caller hung up first).
    pub line_outcome: Option<String>,
    #[serde(skip)]
    pub telnyx_call_control_id: Option<String>,
}

pub const CALL_COLUMNS: &str = "id, organisation_id, direction, from_number, to_number, source_language, \
     target_language, voice_id, record, status, stream_state, hangup_cause, hangup_source, \
     sip_hangup_cause, failure_reason, created_at, initiated_at, answered_at, ended_at, \
     telnyx_call_control_id, interpreted, original_audio, line_number_id, line_outcome";

/// How many columns [`CALL_COLUMNS`] names.
pub const CALL_COLUMN_COUNT: usize = {
    let bytes = CALL_COLUMNS.as_bytes();
    let (mut i, mut commas) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b',' {
            commas += 1;
        }
        i += 1;
    }
    commas + 1
};

pub fn call_from_row(row: &Row) -> Call {
    call_from_row_at(row, 0)
}

/// The call in [`CALL_COLUMNS`] from column `first` on (by position: a name lookup per
/// column is a scan of the row's columns, per row of every page).
pub fn call_from_row_at(row: &Row, first: usize) -> Call {
    Call {
        id: row.get(first),
        organisation_id: row.get(first + 1),
        direction: row.get(first + 2),
        from: row.get(first + 3),
        to: row.get(first + 4),
        source_language: row.get(first + 5),
        target_language: row.get(first + 6),
        voice_id: row.get(first + 7),
        record: row.get(first + 8),
        status: row.try_get(first + 9).unwrap_or(CallStatus::Failed),
        stream_state: row.get(first + 10),
        hangup_cause: row.get(first + 11),
        hangup_source: row.get(first + 12),
        sip_hangup_cause: row.get(first + 13),
        failure_reason: row.get(first + 14),
        created_at: row.get(first + 15),
        initiated_at: row.get(first + 16),
        answered_at: row.get(first + 17),
        ended_at: row.get(first + 18),
        telnyx_call_control_id: row.get(first + 19),
        interpreted: row.get(first + 20),
        original_audio: row.get(first + 21),
        line_number_id: row.get(first + 22),
        line_outcome: row.get(first + 23),
    }
}

pub struct NewCall<'a> {
    pub organisation_id: OrgId,
    pub direction: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub source_language: Option<&'a str>,
    pub target_language: Option<&'a str>,
    pub voice_id: Option<&'a str>,
    pub record: bool,
    pub created_by: Option<&'a str>,
    pub status: CallStatus,
    pub telnyx_call_control_id: Option<&'a str>,
    pub interpreted: bool,
    pub original_audio: &'a str,
}

/// Inserts a call. For inbound calls the unique `telnyx_call_control_id` makes a redelivered
/// `call.initiated` find the existing row instead (`None`).
pub async fn insert(
    client: &impl GenericClient,
    call: &NewCall<'_>,
) -> Result<Option<Call>, DbError> {
    let sql = format!(
        "insert into calls (id, organisation_id, direction, from_number, to_number, source_language,
                            target_language, voice_id, record, created_by, status, telnyx_call_control_id,
                            interpreted, original_audio)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         on conflict (telnyx_call_control_id) do nothing
         returning {CALL_COLUMNS}"
    );
    let row = client
        .query_opt(
            &sql,
            &[
                &CallId::new(),
                &call.organisation_id,
                &call.direction,
                &call.from,
                &call.to,
                &call.source_language,
                &call.target_language,
                &call.voice_id,
                &call.record,
                &call.created_by,
                &call.status,
                &call.telnyx_call_control_id,
                &call.interpreted,
                &call.original_audio,
            ],
        )
        .await?;
    let call = row.as_ref().map(call_from_row);
    if let Some(created) = &call
        && !created.interpreted
    {
        // A one-leg call has one leg too, so every call reads the same way.
        legs::insert(
            client,
            &legs::NewLeg {
                call_id: created.id,
                role: legs::Role::Remote,
                number: if created.direction == "outbound" {
                    &created.to
                } else {
                    &created.from
                },
                language: created.source_language.as_deref(),
                voice_id: created.voice_id.as_deref(),
                status: created.status,
                telnyx_call_control_id: created.telnyx_call_control_id.as_deref(),
            },
        )
        .await?;
    }
    Ok(call)
}

/// A call of this organisation (another organisation's call is `None`, i.e. 404).
pub async fn get(
    client: &impl GenericClient,
    organisation_id: OrgId,
    id: CallId,
) -> Result<Option<Call>, DbError> {
    let sql = format!("select {CALL_COLUMNS} from calls where id = $1 and organisation_id = $2");
    Ok(client
        .query_opt(&sql, &[&id, &organisation_id])
        .await?
        .as_ref()
        .map(call_from_row))
}

pub async fn get_unscoped(
    client: &impl GenericClient,
    id: CallId,
) -> Result<Option<Call>, DbError> {
    let sql = format!("select {CALL_COLUMNS} from calls where id = $1");
    Ok(client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(call_from_row))
}

pub async fn by_call_control_id(
    client: &impl GenericClient,
    ccid: &str,
) -> Result<Option<Call>, DbError> {
    let sql = format!("select {CALL_COLUMNS} from calls where telnyx_call_control_id = $1");
    Ok(client
        .query_opt(&sql, &[&ccid])
        .await?
        .as_ref()
        .map(call_from_row))
}

/// Newest first, keyset-paginated on `(created_at, id)`.
pub struct ListFilter {
    pub status: Option<CallStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// A page of calls of the organisation `organisation` (an SQL expression), newest first;
/// the filter's parameters are `$first`..`$first+5`.
fn list_sql(organisation: &str, first: usize) -> String {
    let [status, since, until, before_at, before_id, limit] =
        std::array::from_fn::<usize, 6, _>(|i| first + i);
    format!(
        "select {CALL_COLUMNS} from calls
         where organisation_id = {organisation}
           and (${status}::text is null or status = ${status})
           and (${since}::timestamptz is null or created_at >= ${since})
           and (${until}::timestamptz is null or created_at < ${until})
           and (${before_at}::timestamptz is null or (created_at, id) < (${before_at}, ${before_id}::uuid))
         order by created_at desc, id desc
         limit ${limit}"
    )
}

static LIST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| list_sql("$1", 2));
static LIST_RIDER_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| list_sql("p.organisation_id", 4));

/// A page of calls as [`ListFilter`] says, in a form that can also ride on a session lookup
/// ([`crate::auth::sessions::Rider`]): `GET /api/calls` with its session not cached is then
/// one round trip to PostgreSQL.
pub struct ListPage {
    status: Option<&'static str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    before_at: Option<DateTime<Utc>>,
    before_id: Option<Uuid>,
    limit: i64,
}

impl ListPage {
    pub fn new(filter: &ListFilter) -> Self {
        let (before_at, before_id) = filter.before.unzip();
        Self {
            status: filter.status.map(CallStatus::as_str),
            since: filter.since,
            until: filter.until,
            before_at,
            before_id,
            limit: filter.limit,
        }
    }

    fn filter_params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.status,
            &self.since,
            &self.until,
            &self.before_at,
            &self.before_id,
            &self.limit,
        ]
    }

    /// The page of `organisation_id`, alone (the session was cached).
    pub async fn run(
        &self,
        db: &crate::db::Db,
        client: &crate::db::Client,
        organisation_id: OrgId,
    ) -> Result<Vec<Call>, DbError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(7);
        params.push(&organisation_id);
        params.extend(self.filter_params());
        let rows = db.query(client, &LIST_SQL, &params).await?;
        Ok(rows.iter().map(call_from_row).collect())
    }
}

impl crate::auth::sessions::Rider for ListPage {
    type Output = Vec<Call>;
    const COLUMNS: usize = CALL_COLUMN_COUNT;

    fn sql(&self) -> &'static str {
        LIST_RIDER_SQL.as_str()
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.filter_params().to_vec()
    }

    fn read(&self, rows: &[Row], first: usize) -> Vec<Call> {
        let mut calls: Vec<Call> = rows
            .iter()
            .map(|row| call_from_row_at(row, first))
            .collect();
        // The page's own order, newest first (the statement does not sort the rows it joins;
        // they come in this order already, which the sort checks in one pass).
        calls.sort_by_key(|call| std::cmp::Reverse((call.created_at, call.id)));
        calls
    }
}

pub async fn list(
    db: &crate::db::Db,
    client: &crate::db::Client,
    organisation_id: OrgId,
    filter: &ListFilter,
) -> Result<Vec<Call>, DbError> {
    ListPage::new(filter).run(db, client, organisation_id).await
}

/// Moves a call forward to `status` (never backward) and fills Telnyx ids it lacks.
pub async fn advance(
    client: &impl GenericClient,
    id: CallId,
    status: CallStatus,
    telnyx_ids: (Option<&str>, Option<&str>, Option<&str>),
) -> Result<(), DbError> {
    client
        .execute(
            "update calls set
                status = case when call_status_rank($2) > call_status_rank(status) then $2 else status end,
                telnyx_call_control_id = coalesce(telnyx_call_control_id, $3),
                telnyx_call_leg_id = coalesce(telnyx_call_leg_id, $4),
                telnyx_call_session_id = coalesce(telnyx_call_session_id, $5),
                updated_at = now()
             where id = $1",
            &[&id, &status, &telnyx_ids.0, &telnyx_ids.1, &telnyx_ids.2],
        )
        .await?;
    mirror_one_leg(client, id).await
}

/// A one-leg call's leg is a projection of the call: copy the call's state onto it.
/// (An interpreted call is the other way round: [`legs::settle`] derives it from its legs.)
async fn mirror_one_leg(client: &impl GenericClient, id: CallId) -> Result<(), DbError> {
    client
        .execute(
            "update call_legs l set status = c.status,
                    telnyx_call_control_id = coalesce(l.telnyx_call_control_id, c.telnyx_call_control_id),
                    telnyx_call_leg_id = coalesce(l.telnyx_call_leg_id, c.telnyx_call_leg_id),
                    telnyx_call_session_id = coalesce(l.telnyx_call_session_id, c.telnyx_call_session_id),
                    dial_requested_at = coalesce(l.dial_requested_at,
                        case when c.telnyx_call_control_id is not null then now() end),
                    stream_state = c.stream_state, stream_state_at = c.stream_state_at,
                    hangup_cause = c.hangup_cause, hangup_source = c.hangup_source,
                    sip_hangup_cause = c.sip_hangup_cause, failure_reason = c.failure_reason,
                    initiated_at = c.initiated_at, answered_at = c.answered_at, ended_at = c.ended_at,
                    updated_at = now()
             from calls c
             where c.id = $1 and l.call_id = c.id and not c.interpreted",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Applies one Telnyx lifecycle event. Order-independent by construction.
pub async fn apply_event(
    client: &impl GenericClient,
    id: CallId,
    event_type: &str,
    occurred_at: DateTime<Utc>,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    apply_lifecycle(
        client,
        Lifecycle::Call(id),
        event_type,
        occurred_at,
        payload,
    )
    .await?;
    Ok(())
}

/// The rows a Telnyx lifecycle event moves: a call, or one leg of an interpreted call. Both
/// carry the same status, times, hang-up and stream columns.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle {
    Call(CallId),
    Leg(crate::ids::LegId),
}

impl Lifecycle {
    fn table(self) -> &'static str {
        match self {
            Lifecycle::Call(_) => "calls",
            Lifecycle::Leg(_) => "call_legs",
        }
    }

    fn id(self) -> Uuid {
        match self {
            Lifecycle::Call(id) => id.uuid(),
            Lifecycle::Leg(id) => id.uuid(),
        }
    }
}

/// Moves the row `rows` names forward by one Telnyx lifecycle event: status only up the
/// rank, first times kept, stream state only by a newer event.
pub async fn apply_lifecycle(
    client: &impl GenericClient,
    rows: Lifecycle,
    event_type: &str,
    occurred_at: DateTime<Utc>,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    let field = |name: &str| {
        payload
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let (table, id) = (rows.table(), rows.id());
    match event_type {
        "call.initiated" => {
            client
                .execute(
                    &format!("update {table} set
                        status = case when call_status_rank('initiated') > call_status_rank(status) then 'initiated' else status end,
                        initiated_at = least(coalesce(initiated_at, $2), $2),
                        telnyx_call_control_id = coalesce(telnyx_call_control_id, $3),
                        telnyx_call_leg_id = coalesce(telnyx_call_leg_id, $4),
                        telnyx_call_session_id = coalesce(telnyx_call_session_id, $5),
                        updated_at = now()
                     where id = $1"),
                    &[&id, &occurred_at, &field("call_control_id"), &field("call_leg_id"), &field("call_session_id")],
                )
                .await?;
        }
        "call.answered" => {
            client
                .execute(
                    &format!("update {table} set
                        status = case when call_status_rank('answered') > call_status_rank(status) then 'answered' else status end,
                        answered_at = least(coalesce(answered_at, $2), $2),
                        updated_at = now()
                     where id = $1"),
                    &[&id, &occurred_at],
                )
                .await?;
        }
        "call.hangup" => {
            client
                .execute(
                    &format!(
                        "update {table} set
                        status = case when status = 'failed' then status else 'ended' end,
                        ended_at = coalesce(ended_at, $2),
                        hangup_cause = coalesce(hangup_cause, $3),
                        hangup_source = coalesce(hangup_source, $4),
                        sip_hangup_cause = coalesce(sip_hangup_cause, $5),
                        updated_at = now()
                     where id = $1"
                    ),
                    &[
                        &id,
                        &occurred_at,
                        &field("hangup_cause"),
                        &field("hangup_source"),
                        &field("sip_hangup_cause"),
                    ],
                )
                .await?;
        }
        streaming if streaming.starts_with("streaming.") => {
            let state = streaming.trim_start_matches("streaming.");
            client
                .execute(
                    &format!("update {table} set stream_state = $2, stream_state_at = $3, updated_at = now()
                     where id = $1 and (stream_state_at is null or stream_state_at <= $3)"),
                    &[&id, &state, &occurred_at],
                )
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Fails a call that has not ended and appends `call.failed` (with the reason) to its event
/// log: the one way a call becomes failed, whether Telnyx refused its dial or the cron found
/// it stale. `leg` names the party whose leg failed it, for an interpreted call. Returns
/// false (and appends nothing) when the call had already ended or failed.
pub async fn fail(
    client: &impl GenericClient,
    id: CallId,
    reason: &str,
    leg: Option<legs::Role>,
) -> Result<bool, DbError> {
    let changed = client
        .execute(
            "update calls set status = 'failed', failure_reason = $2, ended_at = coalesce(ended_at, now()),
                    updated_at = now()
             where id = $1 and status not in ('ended', 'failed')",
            &[&id, &reason],
        )
        .await?
        == 1;
    if !changed {
        return Ok(false);
    }
    mirror_one_leg(client, id).await?;
    let data = match leg {
        Some(role) => {
            serde_json::json!({"status": "failed", "leg": role.as_str(), "failure_reason": reason})
        }
        None => serde_json::json!({"status": "failed", "failure_reason": reason}),
    };
    crate::events::append(client, id, "call.failed", data, Utc::now()).await?;
    Ok(true)
}

/// Records that our answer was accepted; returns false if it had already been recorded.
pub async fn mark_answer_requested(
    client: &impl GenericClient,
    id: CallId,
) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "update calls set answer_requested_at = now() where id = $1 and answer_requested_at is null",
            &[&id],
        )
        .await?
        == 1)
}

pub async fn answer_requested(client: &impl GenericClient, id: CallId) -> Result<bool, DbError> {
    Ok(client
        .query_one(
            "select answer_requested_at is not null as requested from calls where id = $1",
            &[&id],
        )
        .await?
        .get("requested"))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PhoneNumber {
    pub id: Uuid,
    /// E.164, e.g. `+14155550123`.
    pub number: String,
    pub label: Option<String>,
    /// `account` (held by the platform's Telnyx account and assigned to this organisation),
    /// `order` (bought for it) or `legacy` (registered before numbers came from Telnyx).
    pub source: String,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
}

const NUMBER_COLUMNS: &str = "id, e164 as number, label, created_at, source";

fn number_from_row(row: &Row) -> PhoneNumber {
    PhoneNumber {
        id: row.get("id"),
        number: row.get("number"),
        label: row.get("label"),
        created_at: row.get("created_at"),
        source: row.get("source"),
    }
}

/// Where a number being assigned came from, at Telnyx.
#[derive(Debug, Clone, Copy)]
pub struct NumberOrigin<'a> {
    /// `account` or `order`.
    pub source: &'a str,
    pub telnyx_phone_number_id: Option<&'a str>,
    pub telnyx_order_id: Option<&'a str>,
}

/// `None` when the number is already owned (by anyone: numbers are globally unique).
pub async fn add_number(
    client: &impl GenericClient,
    organisation_id: OrgId,
    e164: &str,
    label: Option<&str>,
    origin: NumberOrigin<'_>,
) -> Result<Option<PhoneNumber>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "insert into phone_numbers (id, organisation_id, e164, label, source,
                                            telnyx_phone_number_id, telnyx_order_id)
                 values ($1, $2, $3, $4, $5, $6, $7)
                 on conflict (e164) do nothing
                 returning {NUMBER_COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &organisation_id,
                &e164,
                &label,
                &origin.source,
                &origin.telnyx_phone_number_id,
                &origin.telnyx_order_id,
            ],
        )
        .await?;
    Ok(row.as_ref().map(number_from_row))
}

pub async fn list_numbers(
    client: &impl GenericClient,
    organisation_id: OrgId,
) -> Result<Vec<PhoneNumber>, DbError> {
    let rows = client
        .query(
            &format!(
                "select {NUMBER_COLUMNS} from phone_numbers where organisation_id = $1
                 order by created_at, id"
            ),
            &[&organisation_id],
        )
        .await?;
    Ok(rows.iter().map(number_from_row).collect())
}

pub async fn delete_number(
    client: &impl GenericClient,
    organisation_id: OrgId,
    id: Uuid,
) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "delete from phone_numbers where id = $1 and organisation_id = $2",
            &[&id, &organisation_id],
        )
        .await?
        == 1)
}

/// The organisation owning `e164`, for inbound routing.
pub async fn owner_of_number(
    client: &impl GenericClient,
    e164: &str,
) -> Result<Option<OrgId>, DbError> {
    Ok(client
        .query_opt(
            "select organisation_id from phone_numbers where e164 = $1",
            &[&e164],
        )
        .await?
        .map(|row| row.get("organisation_id")))
}

pub async fn org_owns_number(
    client: &impl GenericClient,
    organisation_id: OrgId,
    e164: &str,
) -> Result<bool, DbError> {
    Ok(owner_of_number(client, e164).await? == Some(organisation_id))
}

/// `+` then 2–15 digits, no leading zero (ITU E.164).
pub fn is_e164(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A language code like `en`, `de`, `pt-BR`, `zh-Hans`.
pub fn is_language_code(text: &str) -> bool {
    let mut parts = text.split('-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (2..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && text.len() <= 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_and_language_validation() {
        assert!(is_e164("+14155550123"));
        assert!(!is_e164("14155550123"));
        assert!(!is_e164("+04155550123"));
        assert!(!is_e164("+1415555012345678"));
        assert!(!is_e164("+1 415 555"));
        assert!(is_language_code("en") && is_language_code("pt-BR") && is_language_code("zh-Hans"));
        assert!(!is_language_code("EN") && !is_language_code("english") && !is_language_code(""));
    }
}
