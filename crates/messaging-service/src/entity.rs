//! SeaORM entities: the rows the service stores. Never wire types; `wire` converts explicitly.

pub mod api_key;
pub mod channel;
pub mod channel_member;
pub mod customer;
pub mod event;
pub mod event_prune_mark;
pub mod idempotency_key;
pub mod login_failure;
pub mod message;
pub mod message_edit;
pub mod message_reaction;
pub mod otp_code;
pub mod refresh_token;
pub mod server_secret;
pub mod store;
pub mod thread;
pub mod thread_subscriber;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_dispatch_position;
pub mod webhook_endpoint;

/// Entities read by position from the rows of `Entity::find()`, which selects the columns in the
/// order of the model's fields. sea-orm's derived reader looks each column up by name and, for
/// every NULL in an optional field, formats the column's name into an error that it then drops:
/// a fifth of the CPU a page of messages took on SQLite. [`read_by_position!`] writes the reader
/// from the field list; each value is decoded as sea-orm decodes it (sqlx's `Option<T>` for the
/// same `T`), and each entity's test fails if its list and its fields differ in order.
pub trait ReadRow: Sized {
    /// The columns `Entity::find()` selects.
    const COLUMNS: usize;

    /// Reads the model from the first [`Self::COLUMNS`] columns of `row`.
    fn read_row<R>(row: &R) -> Result<Self, sea_orm::sqlx::Error>
    where
        R: sea_orm::sqlx::Row,
        usize: sea_orm::sqlx::ColumnIndex<R>,
        uuid::Uuid:
            for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
        String: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
        bool: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
        i64: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
        sea_orm::prelude::DateTimeUtc:
            for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>;
}

/// Implements [`ReadRow`] for a model from its fields, listed in their order.
macro_rules! read_by_position {
    ($model:ident { $($field:ident),+ $(,)? }) => {
        impl $crate::entity::ReadRow for $model {
            const COLUMNS: usize = [$(stringify!($field)),+].len();

            fn read_row<R>(row: &R) -> Result<Self, sea_orm::sqlx::Error>
            where
                R: sea_orm::sqlx::Row,
                usize: sea_orm::sqlx::ColumnIndex<R>,
                uuid::Uuid:
                    for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
                String:
                    for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
                bool:
                    for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
                i64:
                    for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
                sea_orm::prelude::DateTimeUtc:
                    for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
            {
                let mut column = 0..;
                Ok(Self {
                    $($field: row.try_get(column.next().expect("columns never run out"))?,)+
                })
            }
        }
    };
}
pub(crate) use read_by_position;

/// Reads a row of `Entity::find()` with one text column after the model's (an aggregate), by
/// position. `pre` is `FromQueryResult`'s prefix, which a row read by position cannot have.
pub(crate) fn read_with_text<M: ReadRow>(
    row: &sea_orm::QueryResult,
    pre: &str,
) -> Result<(M, String), sea_orm::DbErr> {
    let (model, text) = read(row, pre, true)?;
    Ok((model, text.unwrap_or_default()))
}

/// A model read by position, for `Select::into_model`.
pub(crate) struct ByPosition<M>(pub M);

impl<M: ReadRow + Send + Sync> sea_orm::FromQueryResult for ByPosition<M> {
    fn from_query_result(row: &sea_orm::QueryResult, pre: &str) -> Result<Self, sea_orm::DbErr> {
        Ok(Self(read(row, pre, false)?.0))
    }
}

/// Reads the model by position from a SQLite or PostgreSQL row, and the text column after its
/// columns if `text_after`.
fn read<M: ReadRow>(
    row: &sea_orm::QueryResult,
    pre: &str,
    text_after: bool,
) -> Result<(M, Option<String>), sea_orm::DbErr> {
    use sea_orm::sqlx::Row;
    if !pre.is_empty() {
        return Err(sea_orm::DbErr::Custom(format!(
            "a row read by position has no prefix (asked for `{pre}`)"
        )));
    }
    let read = if let Some(row) = row.try_as_sqlite_row() {
        M::read_row(row).and_then(|model| {
            let text = text_after.then(|| row.try_get(M::COLUMNS)).transpose()?;
            Ok((model, text))
        })
    } else if let Some(row) = row.try_as_pg_row() {
        M::read_row(row).and_then(|model| {
            let text = text_after.then(|| row.try_get(M::COLUMNS)).transpose()?;
            Ok((model, text))
        })
    } else {
        return Err(sea_orm::DbErr::Custom(
            "rows are read by position from SQLite or PostgreSQL".to_owned(),
        ));
    };
    read.map_err(|err| sea_orm::DbErr::Type(err.to_string()))
}

/// The check each [`ReadRow`] entity's test makes.
#[cfg(test)]
pub(crate) async fn assert_reads_by_position<E>(models: &[E::Model])
where
    E: sea_orm::EntityTrait,
    E::Model:
        ReadRow + sea_orm::IntoActiveModel<E::ActiveModel> + Clone + PartialEq + std::fmt::Debug,
{
    use sea_orm::{ConnectionTrait, FromQueryResult, IntoActiveModel, QueryTrait};
    let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
    let backend = db.get_database_backend();
    db.execute(&sea_orm::Schema::new(backend).create_table_from_entity(E::default()))
        .await
        .unwrap();
    for model in models {
        E::insert(model.clone().into_active_model())
            .exec_without_returning(&db)
            .await
            .unwrap();
    }
    let rows = db.query_all_raw(E::find().build(backend)).await.unwrap();
    assert_eq!(rows.len(), models.len());
    for row in rows {
        let named = E::Model::from_query_result(&row, "").unwrap();
        let positional = E::Model::read_row(row.try_as_sqlite_row().unwrap()).unwrap();
        assert_eq!(positional, named);
        assert!(models.contains(&positional));
    }
}
