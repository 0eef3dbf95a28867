//! Long-lived streams (the call events SSE, the browser transcription WebSocket) re-check
//! their caller's authorisation every `AUTH_STREAM_RECHECK_SECS`: the session must still
//! exist (not signed out, deleted or expired) and, for a stream bound to an organisation, the
//! membership too. A request is authorised once; a stream lasting an hour must not outlive a
//! sign-out or a removal by more than one interval.
//!
//! The check runs in its own task and reports through a oneshot channel, so the stream's
//! select loop waits on something cancel-safe and a busy stream never starves the check.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::{CurrentUser, SessionResolver};

use crate::ids::OrgId;

/// Why a stream's authorisation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Revoked {
    /// The session is signed out, deleted or expired.
    SessionEnded,
    /// The caller is no longer a member of the stream's organisation.
    MembershipEnded,
}

/// The final SSE event (`event: auth.revoked`) of a stream whose authorisation ended.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RevokedEvent {
    pub reason: Revoked,
    pub detail: String,
}

impl Revoked {
    /// WebSocket close code: 4401 / 4403 mirror HTTP 401 / 403 in the private-use range.
    pub fn close_code(self) -> u16 {
        match self {
            Revoked::SessionEnded => 4401,
            Revoked::MembershipEnded => 4403,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Revoked::SessionEnded => "The session ended (signed out, deleted or expired).",
            Revoked::MembershipEnded => "You are no longer a member of this organisation.",
        }
    }

    pub fn event(self) -> RevokedEvent {
        RevokedEvent {
            reason: self,
            detail: self.detail().to_owned(),
        }
    }
}

/// Starts re-checking `user` (and, when given, their membership of `organisation_id`) every
/// `AUTH_STREAM_RECHECK_SECS`; the receiver resolves once either is gone. Dropping the
/// receiver stops the checks. A database error skips one check rather than ending a stream.
pub fn watch(
    sessions: &Arc<SessionResolver>,
    interval: Duration,
    user: &CurrentUser,
    organisation_id: Option<OrgId>,
) -> oneshot::Receiver<Revoked> {
    let (tx, rx) = oneshot::channel();
    let token = user.token.clone();
    let sessions = sessions.clone();
    tokio::spawn(async move {
        let mut tx = tx;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = tx.closed() => return,
            }
            match check(&sessions, token.expose(), organisation_id).await {
                Ok(None) => {}
                Ok(Some(revoked)) => {
                    metrics::counter!("stream_auth_revoked_total").increment(1);
                    let _ = tx.send(revoked);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "re-checking a stream's session failed; trying again next interval");
                }
            }
        }
    });
    rx
}

async fn check(
    sessions: &SessionResolver,
    token: &str,
    organisation_id: Option<OrgId>,
) -> Result<Option<Revoked>, crate::db::DbError> {
    let Some(principal) = sessions.revalidate(token).await? else {
        return Ok(Some(Revoked::SessionEnded));
    };
    let member = organisation_id.is_none_or(|id| principal.memberships.iter().any(|m| m.id == id));
    Ok((!member).then_some(Revoked::MembershipEnded))
}
