//! [`GenericClient`]: the one trait query functions take, implemented for a pooled client, a
//! transaction of either kind and a direct connection, so every caller passes `&client` or
//! `&transaction` as it holds it (docs/adr/0039-one-way-structure.md).
//!
//! `tokio_postgres::GenericClient` is implemented for `tokio_postgres::Client` only, so a
//! pooled `deadpool_postgres::Client` had to be dereferenced twice at each call;
//! `deadpool_postgres::GenericClient` covers the pooled client but not a plain
//! `tokio_postgres::Transaction` or a direct connection. Both are sealed, so this is a small
//! local trait of the methods the code uses, each delegating to tokio-postgres.

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement, ToStatement, Transaction};

/// A connection or transaction that runs queries: take `client: &impl GenericClient` (or
/// `&mut impl GenericClient` to open a transaction) and pass `&client` / `&transaction`.
pub trait GenericClient: Sync + Send {
    /// Like `tokio_postgres::Client::execute`.
    fn execute<T>(
        &self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Like `tokio_postgres::Client::query`.
    fn query<T>(
        &self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Like `tokio_postgres::Client::query_one`.
    fn query_one<T>(
        &self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Like `tokio_postgres::Client::query_opt`.
    fn query_opt<T>(
        &self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Like `tokio_postgres::Client::prepare`.
    fn prepare(&self, query: &str) -> impl Future<Output = Result<Statement, Error>> + Send;

    /// Like `tokio_postgres::Client::batch_execute`.
    fn batch_execute(&self, query: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// A transaction (a savepoint when `self` is one already).
    fn transaction(&mut self) -> impl Future<Output = Result<Transaction<'_>, Error>> + Send;
}

/// Implements [`GenericClient`] for `$ty` by delegating to `$target` (which `$ty` is or
/// dereferences to); `['a]` names the lifetime of a transaction type.
macro_rules! delegate {
    ($([$($lt:lifetime)?] $ty:ty => $target:ty),+ $(,)?) => {$(
        impl$(<$lt>)? GenericClient for $ty {
            fn execute<T>(
                &self,
                query: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<u64, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$target>::execute(self, query, params)
            }

            fn query<T>(
                &self,
                query: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$target>::query(self, query, params)
            }

            fn query_one<T>(
                &self,
                query: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Row, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$target>::query_one(self, query, params)
            }

            fn query_opt<T>(
                &self,
                query: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Option<Row>, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$target>::query_opt(self, query, params)
            }

            fn prepare(&self, query: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
                <$target>::prepare(self, query)
            }

            fn batch_execute(&self, query: &str) -> impl Future<Output = Result<(), Error>> + Send {
                <$target>::batch_execute(self, query)
            }

            fn transaction(&mut self) -> impl Future<Output = Result<Transaction<'_>, Error>> + Send {
                <$target>::transaction(self)
            }
        }
    )+};
}

delegate!(
    [] tokio_postgres::Client => tokio_postgres::Client,
    [] deadpool_postgres::Client => tokio_postgres::Client,
    ['a] Transaction<'a> => Transaction<'a>,
    ['a] deadpool_postgres::Transaction<'a> => Transaction<'a>,
);

/// Stores an enum as its `text` name: `ToSql` writes `as_str()`, `FromSql` reads through
/// `parse` (an unknown name is an error, not a default). Status and role enums are passed and
/// read as themselves, never as strings (docs/adr/0039-one-way-structure.md).
macro_rules! text_enum {
    ($ty:ty) => {
        impl tokio_postgres::types::ToSql for $ty {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut bytes::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
            {
                tokio_postgres::types::ToSql::to_sql(&self.as_str(), ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> tokio_postgres::types::FromSql<'a> for $ty {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
                Self::parse(text)
                    .ok_or_else(|| format!("not a {}: {text:?}", stringify!($ty)).into())
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}
pub(crate) use text_enum;
