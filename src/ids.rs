//! Typed ids for what crosses module boundaries: a [`CallId`] cannot be passed where a
//! [`LegId`] or an [`OrgId`] is meant (docs/adr/0044-id-newtypes.md).
//!
//! Each is a `Uuid` underneath and looks like one everywhere outside the type system: serde
//! writes the bare string (`transparent`), PostgreSQL takes and gives a `uuid` (`ToSql` and
//! `FromSql` delegate to `Uuid`'s), `Display` is the hyphenated form. None implements
//! `utoipa::ToSchema` on purpose: a field of an API type holding one says
//! `#[schema(value_type = Uuid)]` (or `Option<Uuid>`), so the OpenAPI document keeps its plain
//! `string`/`uuid` schemas, and a field that forgets fails to compile instead of adding a
//! component to the contract. User ids are Auth.js's text ids and stay `&str`.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Defines a `Copy` newtype over `Uuid` with the conversions above.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new id, time-ordered (UUIDv7) like every id the service makes.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The `Uuid` underneath, for code that speaks plain uuids (SQL text, URLs).
            pub const fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            /// Same as [`Self::new`]: a fresh id, never the nil one.
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<Uuid> for $name {
            fn eq(&self, other: &Uuid) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }

        impl tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut bytes::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
            {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <Uuid as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                <Uuid as tokio_postgres::types::FromSql>::from_sql(ty, raw).map(Self)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <Uuid as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}

uuid_id!(
    /// A call (`calls.id`): the one-leg call or the interpreted call its legs belong to.
    CallId
);
uuid_id!(
    /// One party's leg of an interpreted call (`call_legs.id`).
    LegId
);
uuid_id!(
    /// An organisation (`organisations.id`): the tenant every query is scoped by.
    OrgId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_and_writes_as_its_uuid() {
        let uuid = Uuid::now_v7();
        let id = CallId::from(uuid);
        assert_eq!(id.to_string(), uuid.to_string());
        assert_eq!(serde_json::to_value(id).unwrap(), serde_json::json!(uuid));
        let back: CallId = serde_json::from_value(serde_json::json!(uuid.to_string())).unwrap();
        assert_eq!(back, id);
        assert_eq!(uuid.to_string().parse::<CallId>().unwrap(), id);
        assert_eq!(Uuid::from(id), uuid);
        assert!("not-a-uuid".parse::<LegId>().is_err());
    }

    #[test]
    fn new_ids_differ_and_are_v7() {
        let (a, b) = (OrgId::new(), OrgId::new());
        assert_ne!(a, b);
        assert_eq!(a.uuid().get_version_num(), 7);
    }
}
