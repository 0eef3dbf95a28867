//! Organisations (tenants), memberships and roles: the queries, with no HTTP in them.
//!
//! Every later resource belongs to exactly one organisation; the functions here are what
//! decide whether a user may act in one.

pub mod invitations;

use crate::db::GenericClient;
use crate::ids::OrgId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::DbError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Admins and owners manage members; only owners grant or remove admin and owner.
    pub fn may_assign(self, role: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => role == Role::Member,
            Role::Member => false,
        }
    }
}

crate::db::text_enum!(Role);

/// One organisation as seen by one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    #[schema(value_type = Uuid)]
    pub id: OrgId,
    pub name: String,
    pub role: Role,
    /// The organisation made for this user when first seen.
    pub personal: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Member {
    pub user_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub joined_at: DateTime<Utc>,
}

/// Creates the user's personal organisation unless it exists. Safe under concurrency: the
/// unique `personal_owner_id` makes the second insert a no-op.
pub async fn ensure_personal_organisation(
    client: &mut impl GenericClient,
    user_id: &str,
    display_name: &str,
) -> Result<(), DbError> {
    let transaction = client.transaction().await?;
    let name = format!("{display_name}'s workspace");
    let name: String = name.chars().take(200).collect();
    transaction
        .execute(
            "insert into organisations (id, name, personal_owner_id) values ($1, $2, $3)
             on conflict (personal_owner_id) do nothing",
            &[&OrgId::new(), &name, &user_id],
        )
        .await?;
    transaction
        .execute(
            "insert into memberships (organisation_id, user_id, role)
             select id, $1, 'owner' from organisations where personal_owner_id = $1
             on conflict do nothing",
            &[&user_id],
        )
        .await?;
    transaction.commit().await?;
    Ok(())
}

/// The order of a user's organisations (`$1` the user id): their own personal one first, then
/// other personal ones, then shared ones, oldest first. The session lookup uses it too.
pub const MEMBERSHIPS_ORDER: &str =
    "o.personal_owner_id is distinct from $1, o.personal_owner_id is null, o.created_at, o.id";

static MEMBERSHIPS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "select o.id, o.name, m.role, o.personal_owner_id is not null as personal
         from memberships m join organisations o on o.id = m.organisation_id
         where m.user_id = $1
         order by {MEMBERSHIPS_ORDER}"
    )
});

/// Whether `user_id` has their own personal organisation yet. Being a member of others'
/// organisations does not count: someone who adds a user before their first request must not
/// become their default organisation (pre-emption).
pub async fn owns_personal_organisation(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<bool, DbError> {
    Ok(client
        .query_opt(
            "select 1 from organisations where personal_owner_id = $1",
            &[&user_id],
        )
        .await?
        .is_some())
}

/// The user's organisations, their own personal one first (through the statement cache: session lookups
/// run it on every cache miss).
pub async fn memberships_of(
    db: &crate::db::Db,
    client: &crate::db::Client,
    user_id: &str,
) -> Result<Vec<Membership>, DbError> {
    let rows = db.query(client, &MEMBERSHIPS_SQL, &[&user_id]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(Membership {
                id: row.get("id"),
                name: row.get("name"),
                role: row.try_get("role").ok()?,
                personal: row.get("personal"),
            })
        })
        .collect())
}

pub async fn create_organisation(
    client: &mut impl GenericClient,
    owner_id: &str,
    name: &str,
) -> Result<Membership, DbError> {
    let transaction = client.transaction().await?;
    let id = OrgId::new();
    transaction
        .execute(
            "insert into organisations (id, name) values ($1, $2)",
            &[&id, &name],
        )
        .await?;
    transaction
        .execute(
            "insert into memberships (organisation_id, user_id, role) values ($1, $2, 'owner')",
            &[&id, &owner_id],
        )
        .await?;
    transaction.commit().await?;
    Ok(Membership {
        id,
        name: name.to_owned(),
        role: Role::Owner,
        personal: false,
    })
}

/// Members with their Auth.js profile (`schema` is validated at start-up).
pub async fn members(
    client: &impl GenericClient,
    auth_schema: &str,
    organisation_id: OrgId,
) -> Result<Vec<Member>, DbError> {
    let sql = format!(
        "select m.user_id, u.name, u.email, m.role, m.created_at as joined_at
         from memberships m left join {auth_schema}.users u on u.id::text = m.user_id
         where m.organisation_id = $1 order by m.created_at, m.user_id"
    );
    let rows = client.query(&sql, &[&organisation_id]).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(Member {
                user_id: row.get("user_id"),
                name: row.get("name"),
                email: row.get("email"),
                role: row.try_get("role").ok()?,
                joined_at: row.get("joined_at"),
            })
        })
        .collect())
}

pub enum AddOutcome {
    Added,
    AlreadyMember,
}

pub async fn add_member(
    client: &impl GenericClient,
    organisation_id: OrgId,
    user_id: &str,
    role: Role,
) -> Result<AddOutcome, DbError> {
    let inserted = client
        .execute(
            "insert into memberships (organisation_id, user_id, role) values ($1, $2, $3)
             on conflict do nothing",
            &[&organisation_id, &user_id, &role],
        )
        .await?;
    Ok(if inserted == 1 {
        AddOutcome::Added
    } else {
        AddOutcome::AlreadyMember
    })
}

pub enum RemoveOutcome {
    Removed,
    NotMember,
    LastOwner,
}

/// Removes a membership, refusing to leave an organisation without an owner. The row locks
/// on the organisation's owners make two concurrent removals of the last two owners safe.
pub async fn remove_member(
    client: &mut impl GenericClient,
    organisation_id: OrgId,
    user_id: &str,
) -> Result<RemoveOutcome, DbError> {
    let transaction = client.transaction().await?;
    let owners: Vec<String> = transaction
        .query(
            "select user_id from memberships where organisation_id = $1 and role = 'owner' for update",
            &[&organisation_id],
        )
        .await?
        .iter()
        .map(|row| row.get("user_id"))
        .collect();
    if owners.len() == 1 && owners[0] == user_id {
        return Ok(RemoveOutcome::LastOwner);
    }
    let deleted = transaction
        .execute(
            "delete from memberships where organisation_id = $1 and user_id = $2",
            &[&organisation_id, &user_id],
        )
        .await?;
    transaction.commit().await?;
    Ok(if deleted == 1 {
        RemoveOutcome::Removed
    } else {
        RemoveOutcome::NotMember
    })
}

pub async fn role_of(
    client: &impl GenericClient,
    organisation_id: OrgId,
    user_id: &str,
) -> Result<Option<Role>, DbError> {
    Ok(client
        .query_opt(
            "select role from memberships where organisation_id = $1 and user_id = $2",
            &[&organisation_id, &user_id],
        )
        .await?
        .and_then(|row| row.try_get("role").ok()))
}

/// The user's stored active organisation, if it is still one of their memberships.
pub async fn active_organisation_of(
    db: &crate::db::Db,
    client: &crate::db::Client,
    user_id: &str,
) -> Result<Option<OrgId>, DbError> {
    let rows = db
        .query(
            client,
            "select s.active_organisation_id from user_settings s
             join memberships m on m.organisation_id = s.active_organisation_id and m.user_id = s.user_id
             where s.user_id = $1",
            &[&user_id],
        )
        .await?;
    Ok(rows.first().map(|row| row.get("active_organisation_id")))
}

/// Stores `organisation_id` as the user's active organisation (membership checked by the
/// caller, and again here: the insert selects from memberships, so a membership removed in
/// between stores nothing). Returns whether it was stored.
pub async fn set_active_organisation(
    client: &impl GenericClient,
    user_id: &str,
    organisation_id: OrgId,
) -> Result<bool, DbError> {
    let stored = client
        .execute(
            "insert into user_settings (user_id, active_organisation_id, updated_at)
             select m.user_id, m.organisation_id, now() from memberships m
             where m.user_id = $1 and m.organisation_id = $2
             on conflict (user_id) do update
               set active_organisation_id = excluded.active_organisation_id, updated_at = now()",
            &[&user_id, &organisation_id],
        )
        .await?;
    Ok(stored == 1)
}
