//! Invitations: the only way into someone else's organisation. An admin or owner invites an
//! email address; the person signed in with that address accepts or declines
//! (docs/adr/0032-membership-by-invitation.md).
//!
//! Inviting never reads the Auth.js users: the answer, and the work behind it, is the same
//! whether the address has an account or not. Accepting needs the invitee's own session and
//! an email that matches, proven either by Auth.js (`emailVerified`) or by the accept token the
//! invitation email carried. A foreign or unknown invitation is "not found", never "not yours".

use crate::db::GenericClient;
use crate::ids::OrgId;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Membership, Role};
use crate::db::DbError;

/// An invitation can be accepted for this long; inviting again renews it.
pub const VALID_FOR_DAYS: i64 = 7;
/// Pending invitations one organisation may have (a bound on what one tenant can make us
/// store, and on invitation spam). `InviteRefused::TooManyPending` names it.
pub const MAX_PENDING_PER_ORGANISATION: i64 = 200;
/// RFC 5321's limit on a forward path.
const MAX_EMAIL_LEN: usize = 320;

/// A pending invitation as its organisation's admins see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invitation {
    pub id: Uuid,
    #[schema(value_type = Uuid)]
    pub organisation_id: OrgId,
    /// The address invited, as the inviter wrote it (matched case-insensitively).
    pub email: String,
    /// The role the invitee gets on accepting.
    pub role: Role,
    /// User id of the admin or owner who invited.
    pub invited_by: String,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub expires_at: DateTime<Utc>,
}

/// The answer to inviting: the invitation and, this once, its accept token, which the
/// frontend puts in the invitation email (it is stored only as a hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedInvitation {
    pub id: Uuid,
    #[schema(value_type = Uuid)]
    pub organisation_id: OrgId,
    pub email: String,
    pub role: Role,
    pub invited_by: String,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub expires_at: DateTime<Utc>,
    /// Proves the invitee received the email: `POST /api/invitations/{id}/accept` takes it
    /// from an account whose email matches but is not verified. 43 URL-safe characters.
    pub token: String,
}

/// An invitation as its invitee sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceivedInvitation {
    pub id: Uuid,
    #[schema(value_type = Uuid)]
    pub organisation_id: OrgId,
    pub organisation_name: String,
    pub role: Role,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteRefused {
    #[error("email must be one address (name@domain), 3 to 320 characters")]
    InvalidEmail,
    #[error(
        "the organisation has 200 pending invitations (the most it may have); revoke some first"
    )]
    TooManyPending,
}

/// What became of an answer to an invitation.
#[derive(Debug)]
pub enum Answered {
    Accepted(Membership),
    /// The invitee already belonged to the organisation; the invitation is used up.
    AlreadyMember,
    Declined,
    /// No such pending invitation for this user: absent, expired, someone else's, a wrong
    /// token, or the inviter may no longer grant its role.
    NotFound,
}

/// The address, trimmed, if it is one plausible address.
pub fn normalise_email(email: &str) -> Result<String, InviteRefused> {
    let email = email.trim();
    let plausible = (3..=MAX_EMAIL_LEN).contains(&email.len())
        && email.chars().all(|c| !c.is_whitespace() && !c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if plausible {
        Ok(email.to_owned())
    } else {
        Err(InviteRefused::InvalidEmail)
    }
}

fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Invites `email` into the organisation with `role` (the caller has checked that the
/// inviter may grant it). Inviting an address with a pending invitation renews it: new
/// token, role and expiry, same id.
pub async fn invite(
    client: &mut impl GenericClient,
    organisation_id: OrgId,
    invited_by: &str,
    email: &str,
    role: Role,
) -> Result<Result<IssuedInvitation, InviteRefused>, DbError> {
    let email = match normalise_email(email) {
        Ok(email) => email,
        Err(refused) => return Ok(Err(refused)),
    };
    let token = new_token();
    let transaction = client.transaction().await?;
    // Serialises invitations of one organisation, so the cap holds under concurrency.
    transaction
        .execute(
            "select 1 from organisations where id = $1 for update",
            &[&organisation_id],
        )
        .await?;
    transaction
        .execute(
            "delete from invitations where organisation_id = $1 and expires_at <= now()",
            &[&organisation_id],
        )
        .await?;
    let pending: i64 = transaction
        .query_one(
            "select count(*) as pending from invitations where organisation_id = $1 and lower(email) <> lower($2)",
            &[&organisation_id, &email],
        )
        .await?
        .get("pending");
    if pending >= MAX_PENDING_PER_ORGANISATION {
        return Ok(Err(InviteRefused::TooManyPending));
    }
    let expires_at = Utc::now() + Duration::days(VALID_FOR_DAYS);
    let row = transaction
        .query_one(
            "insert into invitations (id, organisation_id, email, role, token_sha256, invited_by, expires_at)
             values ($1, $2, $3, $4, $5, $6, $7)
             on conflict (organisation_id, lower(email)) do update
               set email = excluded.email, role = excluded.role, token_sha256 = excluded.token_sha256,
                   invited_by = excluded.invited_by, created_at = now(), expires_at = excluded.expires_at
             returning id, created_at, expires_at",
            &[
                &Uuid::now_v7(),
                &organisation_id,
                &email,
                &role,
                &token_digest(&token),
                &invited_by,
                &expires_at,
            ],
        )
        .await?;
    transaction.commit().await?;
    Ok(Ok(IssuedInvitation {
        id: row.get("id"),
        organisation_id,
        email,
        role,
        invited_by: invited_by.to_owned(),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        token,
    }))
}

/// The organisation's pending invitations, oldest first.
pub async fn pending(
    client: &impl GenericClient,
    organisation_id: OrgId,
) -> Result<Vec<Invitation>, DbError> {
    let rows = client
        .query(
            "select id, organisation_id, email, role, invited_by, created_at, expires_at
             from invitations where organisation_id = $1 and expires_at > now()
             order by created_at, id",
            &[&organisation_id],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(Invitation {
                id: row.get("id"),
                organisation_id: row.get("organisation_id"),
                email: row.get("email"),
                role: row.try_get("role").ok()?,
                invited_by: row.get("invited_by"),
                created_at: row.get("created_at"),
                expires_at: row.get("expires_at"),
            })
        })
        .collect())
}

/// Withdraws a pending invitation; whether there was one.
pub async fn revoke(
    client: &impl GenericClient,
    organisation_id: OrgId,
    invitation_id: Uuid,
) -> Result<bool, DbError> {
    Ok(client
        .execute(
            "delete from invitations where organisation_id = $1 and id = $2",
            &[&organisation_id, &invitation_id],
        )
        .await?
        == 1)
}

/// Pending invitations addressed to the user's email, only when Auth.js has verified it:
/// an unverified address proves nothing about whose mailbox it is (`schema` is validated at
/// start-up).
pub async fn received(
    client: &impl GenericClient,
    auth_schema: &str,
    user_id: &str,
) -> Result<Vec<ReceivedInvitation>, DbError> {
    let sql = format!(
        r#"select i.id, i.organisation_id, o.name as organisation_name, i.role, i.expires_at
           from {auth_schema}.users u
           join invitations i on lower(i.email) = lower(u.email)
           join organisations o on o.id = i.organisation_id
           where u.id::text = $1 and u."emailVerified" is not null and i.expires_at > now()
           order by i.created_at, i.id"#
    );
    let rows = client.query(&sql, &[&user_id]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(ReceivedInvitation {
                id: row.get("id"),
                organisation_id: row.get("organisation_id"),
                organisation_name: row.get("organisation_name"),
                role: row.try_get("role").ok()?,
                expires_at: row.get("expires_at"),
            })
        })
        .collect())
}

/// Accepts or declines an invitation for `user_id`. It must be pending, addressed to the
/// user's email, proven by Auth.js's verification or by `token`, and the inviter must still
/// be able to grant its role (an admin removed since cannot have let anyone in). Either
/// answer uses the invitation up.
pub async fn answer(
    client: &mut impl GenericClient,
    auth_schema: &str,
    user_id: &str,
    invitation_id: Uuid,
    token: Option<&str>,
    accept: bool,
) -> Result<Answered, DbError> {
    let digest = token.map(token_digest);
    let transaction = client.transaction().await?;
    let sql = format!(
        r#"select i.organisation_id, i.role, o.name, o.personal_owner_id is not null as personal
           from invitations i
           join organisations o on o.id = i.organisation_id
           join {auth_schema}.users u on u.id::text = $2 and lower(u.email) = lower(i.email)
           where i.id = $1 and i.expires_at > now()
             and (u."emailVerified" is not null or i.token_sha256 = $3)
             and exists (select 1 from memberships m
                         where m.organisation_id = i.organisation_id and m.user_id = i.invited_by
                           and (m.role = 'owner' or (m.role = 'admin' and i.role = 'member')))
           for update of i"#
    );
    let Some(row) = transaction
        .query_opt(&sql, &[&invitation_id, &user_id, &digest])
        .await?
    else {
        return Ok(Answered::NotFound);
    };
    let organisation_id: OrgId = row.get("organisation_id");
    let Ok(role) = row.try_get::<_, Role>("role") else {
        return Ok(Answered::NotFound);
    };
    transaction
        .execute("delete from invitations where id = $1", &[&invitation_id])
        .await?;
    let answered = if !accept {
        Answered::Declined
    } else if matches!(
        super::add_member(&transaction, organisation_id, user_id, role).await?,
        super::AddOutcome::AlreadyMember
    ) {
        Answered::AlreadyMember
    } else {
        Answered::Accepted(Membership {
            id: organisation_id,
            name: row.get("name"),
            role,
            personal: row.get("personal"),
        })
    };
    transaction.commit().await?;
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_is_one_plausible_address() {
        assert_eq!(
            normalise_email("  Ada@Example.com ").unwrap(),
            "Ada@Example.com"
        );
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "a@b@c",
            "ada lovelace@example.com",
            "ada@exa\u{0}mple.com",
        ] {
            assert_eq!(
                normalise_email(bad),
                Err(InviteRefused::InvalidEmail),
                "{bad:?}"
            );
        }
        assert!(normalise_email(&format!("{}@example.com", "a".repeat(320))).is_err());
    }

    #[test]
    fn the_refusal_names_the_cap() {
        let text = InviteRefused::TooManyPending.to_string();
        assert!(
            text.contains(&MAX_PENDING_PER_ORGANISATION.to_string()),
            "{text}"
        );
    }

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(token_digest(&a).len(), 32);
    }
}
