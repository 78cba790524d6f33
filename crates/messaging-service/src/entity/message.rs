//! A message in a thread, and in its channel once published. Deletes are soft: the row stays
//! for audit, lists skip it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub thread_id: Uuid,
    pub store_id: Uuid,
    pub mode: String,
    pub sender_type: String,
    pub sender_id: Option<Uuid>,
    pub message_content: String,
    pub is_edited: bool,
    pub edited_at: Option<DateTimeUtc>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// `text`, `meta`, `tracking_update` or `pickup_reminder`.
    pub message_type: String,
    pub event: Option<String>,
    /// JSON array of HTTPS URLs.
    pub media_urls: Option<String>,
    /// The subscriber who wrote it: a customer, user or store id.
    pub subscriber_id: Option<String>,
    pub resource_id: Option<String>,
    /// The channel it publishes into (the thread's channel when it was sent).
    pub channel_id: Option<Uuid>,
    pub publish_to_channel_at: Option<DateTimeUtc>,
    /// When it reached its channel; `None` while pending.
    pub published_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The columns `Entity::find()` selects, in the order of the fields.
pub const COLUMNS: usize = 21;

/// Reads a message from the first [`COLUMNS`] columns of a row of `Entity::find()`, by
/// position. sea-orm's derived reader looks each column up by name and, for every NULL in an
/// optional field, formats the column's name into an error that it then drops: with eleven
/// optional fields, a fifth of the CPU a page of messages took on SQLite. The values are
/// decoded as sea-orm decodes them (each is sqlx's `Option<T>`, for the same `T`).
/// `tests::positional_read_matches_sea_orm` fails if the fields here and the entity's differ.
pub fn read_row<R>(row: &R) -> Result<Model, sea_orm::sqlx::Error>
where
    R: sea_orm::sqlx::Row,
    usize: sea_orm::sqlx::ColumnIndex<R>,
    Uuid: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
    String: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
    bool: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
    DateTimeUtc: for<'r> sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
{
    let mut column = 0..COLUMNS;
    let mut next = || column.next().expect("no more fields than columns");
    Ok(Model {
        id: row.try_get(next())?,
        thread_id: row.try_get(next())?,
        store_id: row.try_get(next())?,
        mode: row.try_get(next())?,
        sender_type: row.try_get(next())?,
        sender_id: row.try_get(next())?,
        message_content: row.try_get(next())?,
        is_edited: row.try_get(next())?,
        edited_at: row.try_get(next())?,
        is_deleted: row.try_get(next())?,
        deleted_at: row.try_get(next())?,
        created_at: row.try_get(next())?,
        updated_at: row.try_get(next())?,
        message_type: row.try_get(next())?,
        event: row.try_get(next())?,
        media_urls: row.try_get(next())?,
        subscriber_id: row.try_get(next())?,
        resource_id: row.try_get(next())?,
        channel_id: row.try_get(next())?,
        publish_to_channel_at: row.try_get(next())?,
        published_at: row.try_get(next())?,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use sea_orm::{
        ActiveModelTrait, ConnectionTrait, Database, FromQueryResult, IntoActiveModel, QueryTrait,
        Schema,
    };

    use super::*;

    /// Every column holds a value no other column of its type holds, so reading one column for
    /// another shows; and a row with every optional column NULL.
    #[tokio::test]
    async fn positional_read_matches_sea_orm() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        let backend = db.get_database_backend();
        db.execute(&Schema::new(backend).create_table_from_entity(Entity))
            .await
            .unwrap();
        let at = |second: i64| Utc.timestamp_opt(1_800_000_000 + second, 123_000).unwrap();
        let full = Model {
            id: Uuid::from_u128(1),
            thread_id: Uuid::from_u128(2),
            store_id: Uuid::from_u128(3),
            mode: "test".to_owned(),
            sender_type: "customer".to_owned(),
            sender_id: Some(Uuid::from_u128(4)),
            message_content: "hello".to_owned(),
            is_edited: true,
            edited_at: Some(at(1)),
            is_deleted: false,
            deleted_at: Some(at(2)),
            created_at: at(3),
            updated_at: at(4),
            message_type: "text".to_owned(),
            event: Some("event".to_owned()),
            media_urls: Some("[]".to_owned()),
            subscriber_id: Some("subscriber".to_owned()),
            resource_id: Some("resource".to_owned()),
            channel_id: Some(Uuid::from_u128(5)),
            publish_to_channel_at: Some(at(5)),
            published_at: Some(at(6)),
        };
        let empty = Model {
            id: Uuid::from_u128(6),
            sender_id: None,
            is_edited: false,
            edited_at: None,
            is_deleted: true,
            deleted_at: None,
            event: None,
            media_urls: None,
            subscriber_id: None,
            resource_id: None,
            channel_id: None,
            publish_to_channel_at: None,
            published_at: None,
            ..full.clone()
        };
        for model in [&full, &empty] {
            model.clone().into_active_model().insert(&db).await.unwrap();
        }
        let rows = db
            .query_all_raw(Entity::find().build(backend))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            let named = Model::from_query_result(&row, "").unwrap();
            let positional = read_row(row.try_as_sqlite_row().unwrap()).unwrap();
            assert_eq!(positional, named);
            assert!(positional == full || positional == empty);
        }
    }
}
