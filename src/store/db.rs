//! The two backends behind one query API: SQLite (one file, the default) and PostgreSQL (several
//! replicas). A statement is written once, with `$N` placeholders, and run on whichever backend
//! the store opened. Rows decode through each backend's own driver (no copies through sqlx's
//! `Any`), so a row type implements `FromRow` for both; [`from_row!`] writes the two impls from
//! one body.
//!
//! Where the dialects differ, the PostgreSQL schema supplies what SQLite has built in
//! (`json_each`, `instr`: see migrations/postgres), so the statements stay the same.

use super::Result;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments as _, Postgres, Sqlite};
use std::borrow::Cow;

/// A connection pool of one backend.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// An open write transaction; dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Pool {
    /// Most rows one multi-row statement carries on this backend.
    pub(crate) fn rows_per_statement(&self) -> usize {
        match self {
            Pool::Sqlite(_) => super::SQLITE_ROWS_PER_STATEMENT,
            Pool::Postgres(_) => super::PG_ROWS_PER_STATEMENT,
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

impl Tx {
    /// Most rows one multi-row statement carries on this backend.
    pub(crate) fn rows_per_statement(&self) -> usize {
        match self {
            Tx::Sqlite(_) => super::SQLITE_ROWS_PER_STATEMENT,
            Tx::Postgres(_) => super::PG_ROWS_PER_STATEMENT,
        }
    }

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Where a statement runs: the pool (a connection of its own) or an open transaction.
pub(crate) enum Exec<'a> {
    Pool(&'a Pool),
    Tx(&'a mut Tx),
}

impl<'a> From<&'a Pool> for Exec<'a> {
    fn from(pool: &'a Pool) -> Self {
        Exec::Pool(pool)
    }
}

impl<'a> From<&'a mut Tx> for Exec<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        Exec::Tx(tx)
    }
}

/// A bound value, typed so that PostgreSQL is told the parameter's type even when it is NULL.
#[derive(Debug, Clone)]
pub(crate) enum Value<'q> {
    I64(Option<i64>),
    I32(Option<i32>),
    Bool(Option<bool>),
    Text(Option<Cow<'q, str>>),
    Bytes(&'q [u8]),
    /// A JSON document (a `jsonb` parameter on PostgreSQL, text on SQLite).
    Json(Option<Box<serde_json::value::RawValue>>),
}

macro_rules! value_from {
    ($($ty:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl<'q> From<$ty> for Value<'q> {
            fn from($v: $ty) -> Self {
                $e
            }
        })*
    };
}

value_from! {
    i64 => |v| Value::I64(Some(v)),
    &i64 => |v| Value::I64(Some(*v)),
    Option<i64> => |v| Value::I64(v),
    i32 => |v| Value::I32(Some(v)),
    Option<i32> => |v| Value::I32(v),
    bool => |v| Value::Bool(Some(v)),
    Option<bool> => |v| Value::Bool(v),
    String => |v| Value::Text(Some(Cow::Owned(v))),
    Option<String> => |v| Value::Text(v.map(Cow::Owned)),
}

impl<'q> From<&'q str> for Value<'q> {
    fn from(v: &'q str) -> Self {
        Value::Text(Some(Cow::Borrowed(v)))
    }
}

impl<'q> From<&'q String> for Value<'q> {
    fn from(v: &'q String) -> Self {
        Value::Text(Some(Cow::Borrowed(v)))
    }
}

impl<'q> From<Option<&'q str>> for Value<'q> {
    fn from(v: Option<&'q str>) -> Self {
        Value::Text(v.map(Cow::Borrowed))
    }
}

impl<'q> From<&'q Option<String>> for Value<'q> {
    fn from(v: &'q Option<String>) -> Self {
        Value::Text(v.as_deref().map(Cow::Borrowed))
    }
}

impl<'q> From<&'q [u8]> for Value<'q> {
    fn from(v: &'q [u8]) -> Self {
        Value::Bytes(v)
    }
}

impl<'q, T: serde::Serialize> From<sqlx::types::Json<T>> for Value<'q> {
    fn from(v: sqlx::types::Json<T>) -> Self {
        Value::from(Some(v))
    }
}

impl<'q, T: serde::Serialize> From<Option<sqlx::types::Json<T>>> for Value<'q> {
    fn from(v: Option<sqlx::types::Json<T>>) -> Self {
        // Serialising plain data (strings, maps of strings, numbers) cannot fail.
        Value::Json(v.map(|v| serde_json::value::to_raw_value(&v.0).unwrap_or_default()))
    }
}

/// One statement and its arguments, not yet run.
#[must_use]
pub(crate) struct Query<'q> {
    sql: &'q str,
    args: Vec<Value<'q>>,
}

/// A statement whose rows are read with [`sqlx::FromRow`] (or counted, with `execute`).
pub(crate) fn query(sql: &str) -> Query<'_> {
    Query { sql, args: Vec::new() }
}

/// A statement whose rows are one column each, read as a plain value.
pub(crate) fn query_scalar(sql: &str) -> Scalar<'_> {
    Scalar(query(sql))
}

/// A row type both backends can decode.
pub(crate) trait Decoded:
    for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Decoded for T where T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {}

/// A column type both backends can decode.
pub(crate) trait Column:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + Send
    + Unpin
{
}
impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + Send
        + Unpin
{
}

/// Runs `$body` with the statement's text and arguments for the backend of `$on`, and `$ex`
/// its executor there (a pool or an open transaction): written once, compiled per backend.
macro_rules! on_backend {
    ($query:expr, $on:expr, |$sql:ident, $args:ident, $ex:ident| $body:expr) => {
        match $on {
            Exec::Pool(Pool::Sqlite(pool)) => {
                let ($sql, $args) = $query.sqlite_args()?;
                let $ex = pool;
                $body
            }
            Exec::Tx(Tx::Sqlite(tx)) => {
                let ($sql, $args) = $query.sqlite_args()?;
                let $ex = &mut **tx;
                $body
            }
            Exec::Pool(Pool::Postgres(pool)) => {
                let ($sql, $args) = $query.pg_args()?;
                let $ex = pool;
                $body
            }
            Exec::Tx(Tx::Postgres(tx)) => {
                let ($sql, $args) = $query.pg_args()?;
                let $ex = &mut **tx;
                $body
            }
        }
    };
}

impl<'q> Query<'q> {
    pub(crate) fn bind(mut self, value: impl Into<Value<'q>>) -> Self {
        self.args.push(value.into());
        self
    }

    fn sqlite_args(self) -> Result<(&'q str, SqliteArguments<'q>)> {
        let mut out = SqliteArguments::default();
        for value in self.args {
            match value {
                Value::I64(v) => out.add(v),
                Value::I32(v) => out.add(v),
                Value::Bool(v) => out.add(v),
                Value::Text(v) => out.add(v),
                Value::Bytes(v) => out.add(v),
                Value::Json(v) => out.add(v.map(|v| String::from(v.get()))),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok((self.sql, out))
    }

    fn pg_args(self) -> Result<(&'q str, PgArguments)> {
        let mut out = PgArguments::default();
        for value in self.args {
            match value {
                Value::I64(v) => out.add(v),
                Value::I32(v) => out.add(v),
                Value::Bool(v) => out.add(v),
                Value::Text(v) => out.add(v.as_deref()),
                Value::Bytes(v) => out.add(v),
                Value::Json(v) => out.add(v.map(sqlx::types::Json)),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok((self.sql, out))
    }

    /// Runs the statement; returns the number of rows it changed.
    pub(crate) fn execute<'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<u64>>
    where
        'q: 'e,
    {
        let on = on.into();
        Box::pin(async move {
            Ok(on_backend!(self, on, |sql, args, ex| sqlx::query_with(sql, args)
                .execute(ex)
                .await?
                .rows_affected()))
        })
    }

    pub(crate) fn fetch_all<'e, T: Decoded + 'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<Vec<T>>>
    where
        'q: 'e,
    {
        let on = on.into();
        Box::pin(async move {
            Ok(on_backend!(self, on, |sql, args, ex| sqlx::query_as_with(sql, args)
                .fetch_all(ex)
                .await?))
        })
    }

    pub(crate) fn fetch_optional<'e, T: Decoded + 'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<Option<T>>>
    where
        'q: 'e,
    {
        let on = on.into();
        Box::pin(async move {
            Ok(on_backend!(self, on, |sql, args, ex| sqlx::query_as_with(sql, args)
                .fetch_optional(ex)
                .await?))
        })
    }

    /// The one row; `NotFound` when there is none.
    pub(crate) fn fetch_one<'e, T: Decoded + 'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<T>>
    where
        'q: 'e,
    {
        let row = self.fetch_optional(on);
        Box::pin(async move { row.await?.ok_or(super::Error::NotFound) })
    }
}

/// A statement read one column per row (`query_scalar`).
#[must_use]
pub(crate) struct Scalar<'q>(Query<'q>);

impl<'q> Scalar<'q> {
    pub(crate) fn bind(self, value: impl Into<Value<'q>>) -> Self {
        Scalar(self.0.bind(value))
    }

    pub(crate) fn fetch_all<'e, T: Column + 'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<Vec<T>>>
    where
        'q: 'e,
    {
        let rows = self.0.fetch_all::<(T,)>(on);
        Box::pin(async move { Ok(rows.await?.into_iter().map(|(v,)| v).collect()) })
    }

    pub(crate) fn fetch_optional<'e, T: Column + 'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<Option<T>>>
    where
        'q: 'e,
    {
        let row = self.0.fetch_optional::<(T,)>(on);
        Box::pin(async move { Ok(row.await?.map(|(v,)| v)) })
    }

    pub(crate) fn fetch_one<'e, T: Column + 'e>(self, on: impl Into<Exec<'e>>) -> BoxFuture<'e, Result<T>>
    where
        'q: 'e,
    {
        let row = self.fetch_optional(on);
        Box::pin(async move { row.await?.ok_or(super::Error::NotFound) })
    }
}

/// Implements `FromRow` for both backends' rows with one body (`row` is the backend's row).
macro_rules! from_row {
    ($ty:ty, |$row:ident| $body:block) => {
        impl sqlx::FromRow<'_, sqlx::sqlite::SqliteRow> for $ty {
            fn from_row($row: &sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
                #[allow(unused_imports)]
                use sqlx::Row as _;
                $body
            }
        }
        impl sqlx::FromRow<'_, sqlx::postgres::PgRow> for $ty {
            fn from_row($row: &sqlx::postgres::PgRow) -> sqlx::Result<Self> {
                #[allow(unused_imports)]
                use sqlx::Row as _;
                $body
            }
        }
    };
}
pub(crate) use from_row;

/// A stored name (a status, an error code) parsed, or a decode error naming the column.
pub(crate) fn parsed<T: std::str::FromStr>(column: &str, text: String) -> sqlx::Result<T> {
    text.parse().map_err(|_| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("unexpected value {text:?}").into(),
    })
}
