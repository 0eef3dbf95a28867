//! Call legs: each party of a call on its own Telnyx leg, with its own language, voice,
//! status and media stream. An interpreted call has an `agent` leg (the organisation's side,
//! dialed first) and a `remote` leg (dialed once the agent answers); a one-leg call (legacy)
//! has one `remote` leg mirroring the call.
//!
//! Like the call itself, a leg's state only moves forward and every update is
//! order-independent. [`settle`] derives the call from its legs after each event and says
//! what must happen next (dial the remote party, hang up the other leg), so a redelivered or
//! reordered event converges on the same call and never repeats a command.

use crate::db::GenericClient;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::ToSchema;

use crate::ids::{CallId, LegId};

use super::CallStatus;
use crate::db::DbError;

/// Which side of the conversation a leg carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
// Named apart from the membership `Role` (owner/admin/member): one schema name each.
#[schema(as = LegRole)]
pub enum Role {
    /// The organisation's side.
    Agent,
    /// The other party.
    Remote,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Remote => "remote",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "agent" => Some(Role::Agent),
            "remote" => Some(Role::Remote),
            _ => None,
        }
    }

    pub fn other(self) -> Self {
        match self {
            Role::Agent => Role::Remote,
            Role::Remote => Role::Agent,
        }
    }
}

crate::db::text_enum!(Role);

/// One party's leg as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Leg {
    #[schema(value_type = Uuid)]
    pub id: LegId,
    pub role: Role,
    /// E.164 number of this party.
    pub number: String,
    /// BCP-47 language, or `auto` (detected per turn). Null on legacy legs without one.
    pub language: Option<String>,
    /// The language AssemblyAI detected most recently for an `auto` party.
    pub detected_language: Option<String>,
    /// ElevenLabs voice this party hears translations in.
    pub voice_id: Option<String>,
    pub status: CallStatus,
    /// `started`, `stopped` or `failed`: the leg's media stream as Telnyx reported it.
    pub stream_state: Option<String>,
    pub hangup_cause: Option<String>,
    /// `caller`, `callee`, … as Telnyx reports it.
    pub hangup_source: Option<String>,
    pub sip_hangup_cause: Option<String>,
    /// Why the leg failed or was never dialed.
    pub failure_reason: Option<String>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub initiated_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamps::option::serialize")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub call_id: CallId,
    #[serde(skip)]
    pub telnyx_call_control_id: Option<String>,
    #[serde(skip)]
    pub dial_requested_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub hangup_requested_at: Option<DateTime<Utc>>,
}

const LEG_COLUMNS: &str = "l.id, l.role, l.number, l.language, l.voice_id, l.status, l.stream_state, \
     l.hangup_cause, l.hangup_source, l.sip_hangup_cause, l.failure_reason, l.initiated_at, \
     l.answered_at, l.ended_at, l.call_id, l.telnyx_call_control_id, l.dial_requested_at, \
     l.hangup_requested_at, \
     (select t.language from transcript_turns t where t.call_id = l.call_id and t.track = l.role \
        and t.language is not null order by t.created_at desc limit 1) as detected_language";

fn leg_from_row(row: &Row) -> Leg {
    Leg {
        id: row.get("id"),
        role: row.try_get("role").unwrap_or(Role::Remote),
        number: row.get("number"),
        language: row.get("language"),
        voice_id: row.get("voice_id"),
        status: row.try_get("status").unwrap_or(CallStatus::Failed),
        stream_state: row.get("stream_state"),
        hangup_cause: row.get("hangup_cause"),
        hangup_source: row.get("hangup_source"),
        sip_hangup_cause: row.get("sip_hangup_cause"),
        failure_reason: row.get("failure_reason"),
        initiated_at: row.get("initiated_at"),
        answered_at: row.get("answered_at"),
        ended_at: row.get("ended_at"),
        call_id: row.get("call_id"),
        telnyx_call_control_id: row.get("telnyx_call_control_id"),
        dial_requested_at: row.get("dial_requested_at"),
        hangup_requested_at: row.get("hangup_requested_at"),
        detected_language: row.get("detected_language"),
    }
}

pub struct NewLeg<'a> {
    pub call_id: CallId,
    pub role: Role,
    pub number: &'a str,
    pub language: Option<&'a str>,
    pub voice_id: Option<&'a str>,
    pub status: CallStatus,
    pub telnyx_call_control_id: Option<&'a str>,
}

/// Inserts a leg; a leg that already exists for this call and role is left as it is.
pub async fn insert(client: &impl GenericClient, leg: &NewLeg<'_>) -> Result<LegId, DbError> {
    let row = client
        .query_one(
            "insert into call_legs (id, call_id, role, number, language, voice_id, status, telnyx_call_control_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8)
             on conflict (call_id, role) do update set role = excluded.role
             returning id",
            &[
                &LegId::new(),
                &leg.call_id,
                &leg.role,
                &leg.number,
                &leg.language,
                &leg.voice_id,
                &leg.status,
                &leg.telnyx_call_control_id,
            ],
        )
        .await?;
    Ok(row.get("id"))
}

/// The call's legs, agent first.
/// The Telnyx call control ids to speak into or hang up to reach every live party of a
/// call, each with a stable key for command ids: an interpreted call's live legs
/// (`<call>:<role>`), or a one-leg call's own id (`<call>`).
pub async fn live_control_ids(
    client: &impl GenericClient,
    call_id: CallId,
) -> Result<Vec<(String, String)>, DbError> {
    let Some(call) = super::get_unscoped(client, call_id).await? else {
        return Ok(Vec::new());
    };
    if call.status.is_terminal() {
        return Ok(Vec::new());
    }
    Ok(if call.interpreted {
        for_call(client, call_id)
            .await?
            .into_iter()
            .filter(|leg| !leg.status.is_terminal())
            .filter_map(|leg| {
                let ccid = leg.telnyx_call_control_id?;
                Some((ccid, format!("{call_id}:{}", leg.role.as_str())))
            })
            .collect()
    } else {
        call.telnyx_call_control_id
            .map(|ccid| (ccid, call_id.to_string()))
            .into_iter()
            .collect()
    })
}

pub async fn for_call(client: &impl GenericClient, call_id: CallId) -> Result<Vec<Leg>, DbError> {
    let sql = format!(
        "select {LEG_COLUMNS} from call_legs l where l.call_id = $1
         order by case l.role when 'agent' then 0 else 1 end"
    );
    Ok(client
        .query(&sql, &[&call_id])
        .await?
        .iter()
        .map(leg_from_row)
        .collect())
}

pub async fn get(client: &impl GenericClient, id: LegId) -> Result<Option<Leg>, DbError> {
    let sql = format!("select {LEG_COLUMNS} from call_legs l where l.id = $1");
    Ok(client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(leg_from_row))
}

pub async fn by_role(
    client: &impl GenericClient,
    call_id: CallId,
    role: Role,
) -> Result<Option<Leg>, DbError> {
    let sql = format!("select {LEG_COLUMNS} from call_legs l where l.call_id = $1 and l.role = $2");
    Ok(client
        .query_opt(&sql, &[&call_id, &role])
        .await?
        .as_ref()
        .map(leg_from_row))
}

pub async fn by_call_control_id(
    client: &impl GenericClient,
    ccid: &str,
) -> Result<Option<Leg>, DbError> {
    let sql = format!("select {LEG_COLUMNS} from call_legs l where l.telnyx_call_control_id = $1");
    Ok(client
        .query_opt(&sql, &[&ccid])
        .await?
        .as_ref()
        .map(leg_from_row))
}

/// Telnyx accepted our dial of this leg: it is `dialing` under these ids.
pub async fn dialed(
    client: &impl GenericClient,
    id: LegId,
    telnyx_ids: (&str, Option<&str>, Option<&str>),
) -> Result<(), DbError> {
    client
        .execute(
            "update call_legs set
                status = case when call_status_rank('dialing') > call_status_rank(status) then 'dialing' else status end,
                telnyx_call_control_id = coalesce(telnyx_call_control_id, $2),
                telnyx_call_leg_id = coalesce(telnyx_call_leg_id, $3),
                telnyx_call_session_id = coalesce(telnyx_call_session_id, $4),
                dial_requested_at = coalesce(dial_requested_at, now()),
                updated_at = now()
             where id = $1",
            &[&id, &telnyx_ids.0, &telnyx_ids.1, &telnyx_ids.2],
        )
        .await?;
    Ok(())
}

/// The leg could not be placed (Telnyx refused the dial) or was never dialed.
pub async fn mark_failed(
    client: &impl GenericClient,
    id: LegId,
    reason: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "update call_legs set status = 'failed', failure_reason = coalesce(failure_reason, $2),
                    ended_at = coalesce(ended_at, now()), updated_at = now()
             where id = $1 and status not in ('ended', 'failed')",
            &[&id, &reason],
        )
        .await?;
    Ok(())
}

/// How long a claimed command may stay unconfirmed before another job may claim it again
/// (a claim committed without the command's record, e.g. by an older version of this code).
const CLAIM_LEASE_SECS: f64 = 30.0;

/// Claims the right to dial this leg: true for exactly one of several jobs. Taken inside the
/// `telnyx.event` job's transaction, it commits with the dial's record ([`dialed`]) or rolls
/// back with the run when the dial could not be sent.
pub async fn claim_dial(client: &impl GenericClient, id: LegId) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "update call_legs set dial_requested_at = now(), updated_at = now()
             where id = $1 and telnyx_call_control_id is null and status not in ('ended', 'failed')
               and (dial_requested_at is null or dial_requested_at < now() - make_interval(secs => $2))",
            &[&id, &CLAIM_LEASE_SECS],
        )
        .await?
        == 1)
}

/// Claims our hangup of this leg: true for exactly one job (see [`claim_dial`]).
pub async fn claim_hangup(client: &impl GenericClient, id: LegId) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "update call_legs set hangup_requested_at = now()
             where id = $1 and (hangup_requested_at is null
                                or hangup_requested_at < now() - make_interval(secs => $2))
               and status not in ('ended', 'failed')",
            &[&id, &CLAIM_LEASE_SECS],
        )
        .await?
        == 1)
}

/// Applies one Telnyx lifecycle event to a leg, by the same rules as the call's
/// ([`super::apply_event`]).
pub async fn apply_event(
    client: &impl GenericClient,
    id: LegId,
    event_type: &str,
    occurred_at: DateTime<Utc>,
    payload: &serde_json::Value,
) -> Result<(), DbError> {
    super::apply_lifecycle(
        client,
        super::Lifecycle::Leg(id),
        event_type,
        occurred_at,
        payload,
    )
    .await
}

/// What the call needs next, after its legs changed.
#[derive(Debug, Clone)]
pub enum Next {
    /// The party dialed first answered: ring this leg now (the remote party of an outbound
    /// call once the agent answered; the agent once a line answered its caller).
    Dial(Leg),
    /// The other party hung up (or never connected): end this leg too.
    HangUp(Leg),
    /// A line answered this caller: speak the line's greeting to them.
    Greet(Leg),
    /// A line's agent did not answer (or could not be dialed): apologise to this caller,
    /// then hang up ([`super::lines`]).
    Apologise(Leg),
}

/// Derives an interpreted call's status from its legs and returns what must happen next.
///
/// - The party dialed first is the agent on an outbound call and the caller (`remote`) on
///   an inbound line; the other is dialed once the first answered.
/// - `initiated` once the first leg is; `answered` once both parties have answered (both
///   are on the line and the conversation starts).
/// - Once every leg has ended, the call ends: `failed` with a reason naming the party if
///   the leg that ended first never connected, else `ended`.
/// - A leg that ends while the other is live makes us hang up the other (a line's caller
///   whose agent never answered hears an apology first); a first party who ends before the
///   second was dialed leaves the second leg `failed` ("not dialed").
pub async fn settle(client: &impl GenericClient, call_id: CallId) -> Result<Vec<Next>, DbError> {
    let legs = for_call(client, call_id).await?;
    let (Some(agent), Some(remote)) = (
        legs.iter().find(|l| l.role == Role::Agent),
        legs.iter().find(|l| l.role == Role::Remote),
    ) else {
        return Ok(Vec::new());
    };
    // An interpreted call that came in is a line's: its caller is on the line first.
    let inbound: bool = client
        .query_opt(
            "select direction = 'inbound' as inbound from calls where id = $1",
            &[&call_id],
        )
        .await?
        .is_some_and(|row| row.get("inbound"));
    let (first, second) = if inbound {
        (remote, agent)
    } else {
        (agent, remote)
    };
    let mut next = Vec::new();
    if first.status.is_terminal()
        && second.telnyx_call_control_id.is_none()
        && !second.status.is_terminal()
    {
        let reason = if inbound {
            "not dialed: the caller hung up first"
        } else {
            "not dialed: the agent's leg ended first"
        };
        mark_failed(client, second.id, reason).await?;
        return Box::pin(settle(client, call_id)).await;
    }
    if first.answered_at.is_some()
        && !first.status.is_terminal()
        && second.telnyx_call_control_id.is_none()
        && !second.status.is_terminal()
    {
        // The agent is rung first: a greeting that cannot be spoken yet must not delay them.
        next.push(Next::Dial(second.clone()));
        if inbound {
            next.push(Next::Greet(first.clone()));
        }
    }
    for (ended, other) in [(agent, remote), (remote, agent)] {
        if ended.status.is_terminal()
            && !other.status.is_terminal()
            && other.telnyx_call_control_id.is_some()
        {
            if inbound && ended.role == Role::Agent && ended.answered_at.is_none() {
                next.push(Next::Apologise(other.clone()));
            } else {
                next.push(Next::HangUp(other.clone()));
            }
        }
    }

    if first.initiated_at.is_some()
        || matches!(first.status, CallStatus::Initiated | CallStatus::Answered)
    {
        forward(client, call_id, CallStatus::Initiated, first.initiated_at).await?;
    }
    if let (Some(agent_at), Some(remote_at)) = (agent.answered_at, remote.answered_at) {
        client
            .execute(
                "update calls set
                    status = case when call_status_rank('answered') > call_status_rank(status) then 'answered' else status end,
                    answered_at = least(coalesce(answered_at, $2), $2), updated_at = now()
                 where id = $1",
                &[&call_id, &agent_at.max(remote_at)],
            )
            .await?;
    }
    if inbound {
        // How the line's call turned out; the first outcome reached stays.
        let outcome = if agent.answered_at.is_some() && remote.answered_at.is_some() {
            Some("connected")
        } else if agent.status.is_terminal()
            && agent.answered_at.is_none()
            && (!remote.status.is_terminal() || agent.ended_at <= remote.ended_at)
        {
            Some(if agent.telnyx_call_control_id.is_none() {
                "agent_failed"
            } else {
                "agent_no_answer"
            })
        } else if remote.status.is_terminal() {
            Some("caller_abandoned")
        } else {
            None
        };
        if let Some(outcome) = outcome {
            client
                .execute(
                    "update calls set line_outcome = coalesce(line_outcome, $2) where id = $1",
                    &[&call_id, &outcome],
                )
                .await?;
        }
    }
    if agent.status.is_terminal() && remote.status.is_terminal() {
        let first = if agent.ended_at.unwrap_or_default() <= remote.ended_at.unwrap_or_default() {
            agent
        } else {
            remote
        };
        let ended_at = agent.ended_at.max(remote.ended_at);
        if first.answered_at.is_none() {
            let who = match first.role {
                Role::Agent => "the agent",
                Role::Remote => "the remote party",
            };
            let why = first
                .failure_reason
                .clone()
                .or_else(|| first.hangup_cause.clone())
                .unwrap_or_else(|| "no answer".into());
            let reason = format!("{who} did not connect ({why})");
            client
                .execute(
                    "update calls set status = 'failed', failure_reason = coalesce(failure_reason, $2),
                            ended_at = coalesce(ended_at, $3, now()), updated_at = now()
                     where id = $1 and status not in ('ended', 'failed')",
                    &[&call_id, &reason, &ended_at],
                )
                .await?;
        } else {
            client
                .execute(
                    "update calls set status = 'ended', ended_at = coalesce(ended_at, $2, now()),
                            hangup_cause = coalesce(hangup_cause, $3),
                            hangup_source = coalesce(hangup_source, $4),
                            updated_at = now()
                     where id = $1 and status not in ('ended', 'failed')",
                    &[
                        &call_id,
                        &ended_at,
                        &first.hangup_cause,
                        &first
                            .hangup_source
                            .as_ref()
                            .map(|s| format!("{}:{s}", first.role.as_str())),
                    ],
                )
                .await?;
        }
    }
    Ok(next)
}

async fn forward(
    client: &impl GenericClient,
    call_id: CallId,
    status: CallStatus,
    at: Option<DateTime<Utc>>,
) -> Result<(), DbError> {
    client
        .execute(
            "update calls set
                status = case when call_status_rank($2) > call_status_rank(status) then $2 else status end,
                initiated_at = case when $3::timestamptz is null then initiated_at
                                    else least(coalesce(initiated_at, $3), $3) end,
                updated_at = now()
             where id = $1",
            &[&call_id, &status, &at],
        )
        .await?;
    Ok(())
}
