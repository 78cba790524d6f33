//! Explicit conversions from entities to wire types, and the `fields` projection of threads.

use std::str::FromStr;

use messaging_api::{
    Customer, EventType, Message, MessageType, Reaction, SenderType, Thread, ThreadPriority,
    ThreadStatus, ThreadType, WebhookDelivery, WebhookEndpoint,
};

use crate::{
    auth::Caller,
    entity::{customer, message, thread, thread_subscriber, webhook_delivery, webhook_endpoint},
    error::ServiceError,
    subscribers::wire_subscriber,
};

/// Parses an enum value the service itself wrote. A value it cannot read is corruption: 500.
fn stored<T: FromStr<Err = String>>(value: &str) -> Result<T, ServiceError> {
    T::from_str(value)
        .map_err(|e| ServiceError::internal(std::io::Error::other(format!("stored value: {e}"))))
}

pub fn customer(row: customer::Model) -> Customer {
    Customer {
        id: row.id,
        email: row.email,
        name: row.name,
        phone: row.phone,
    }
}

/// The event types an endpoint stores, space-separated (empty: all).
pub fn webhook_event_types(stored_types: &str) -> Result<Vec<EventType>, ServiceError> {
    stored_types.split_whitespace().map(stored).collect()
}

pub fn webhook_endpoint(row: webhook_endpoint::Model) -> Result<WebhookEndpoint, ServiceError> {
    Ok(WebhookEndpoint {
        id: row.id,
        url: row.url,
        event_types: webhook_event_types(&row.event_types)?,
        description: row.description,
        enabled: row.enabled,
        created_at: row.created_at,
    })
}

pub fn webhook_delivery(row: webhook_delivery::Model) -> Result<WebhookDelivery, ServiceError> {
    Ok(WebhookDelivery {
        id: row.id,
        event_id: row.event_id,
        event_type: stored(&row.event_type)?,
        attempts: row.attempts,
        status: stored(&row.status)?,
        last_response_status: row.last_response_status,
        // A pending delivery's time is its due time (or the end of a running attempt's lease).
        next_attempt_at: row.next_attempt_at.filter(|_| row.status == "pending"),
        created_at: row.created_at,
    })
}

/// A thread with its subscribers (all of them, archived ones included).
pub fn thread(
    row: thread::Model,
    caller: &Caller,
    subscribers: &[thread_subscriber::Model],
) -> Result<Thread, ServiceError> {
    let active = || subscribers.iter().filter(|s| !s.is_archived);
    Ok(Thread {
        id: row.id,
        customer_id: Some(row.customer_id),
        customer_name: row.customer_name,
        customer_email: row.customer_email,
        customer_phone: row.customer_phone,
        store_name: Some(caller.store_name.clone()),
        store_avatar: caller.store_avatar.clone(),
        order_id: row.order_id,
        product_id: row.product_id,
        subject: Some(row.subject),
        thread_type: Some(stored::<ThreadType>(&row.thread_type)?),
        status: Some(stored::<ThreadStatus>(&row.status)?),
        priority: Some(stored::<ThreadPriority>(&row.priority)?),
        last_message_at: Some(row.last_message_at),
        last_message_by: row
            .last_message_by
            .as_deref()
            .map(stored::<SenderType>)
            .transpose()?,
        unread_count_customer: Some(row.unread_count_customer),
        unread_count_store: Some(row.unread_count_store),
        is_archived: Some(row.is_archived),
        is_muted: Some(row.is_muted),
        is_pinned: Some(row.is_pinned),
        created_at: Some(row.created_at),
        updated_at: Some(row.updated_at),
        resource_id: row.resource_id,
        location_id: row.location_id,
        name: row.name,
        organization_id: Some(row.store_id),
        subscriber_ids: Some(active().map(|s| s.subscriber_id.clone()).collect()),
        subscribers: Some(subscribers.iter().map(wire_subscriber).collect()),
        unread_by: Some(
            active()
                .filter(|s| s.kind != "contact" && s.unread_count > 0)
                .map(|s| s.subscriber_id.clone())
                .collect(),
        ),
        recent_messages: None,
        has_more: None,
    })
}

/// A message with its reactions.
pub fn message(row: message::Model, reactions: Vec<Reaction>) -> Result<Message, ServiceError> {
    let media_urls = match row.media_urls.as_deref() {
        Some(json) => serde_json::from_str(json).map_err(ServiceError::internal)?,
        None => Vec::new(),
    };
    Ok(Message {
        id: row.id,
        thread_id: row.thread_id,
        message_content: row.message_content,
        sender_type: stored::<SenderType>(&row.sender_type)?,
        sender_id: row.sender_id,
        is_edited: row.is_edited,
        edited_at: row.edited_at,
        is_deleted: row.is_deleted,
        created_at: row.created_at,
        updated_at: row.updated_at,
        r#type: stored::<MessageType>(&row.message_type)?,
        event: row.event,
        media_urls,
        reactions,
        subscriber_id: row.subscriber_id,
        resource_id: row.resource_id,
        publish_to_channel_at: row.publish_to_channel_at,
    })
}

/// The thread fields a client may ask for with `fields` (seed 001's list).
pub const THREAD_FIELDS: &[&str] = &[
    "id",
    "customer_id",
    "customer_name",
    "customer_email",
    "customer_phone",
    "store_name",
    "store_avatar",
    "order_id",
    "product_id",
    "subject",
    "thread_type",
    "status",
    "priority",
    "last_message_at",
    "last_message_by",
    "unread_count_customer",
    "unread_count_store",
    "is_archived",
    "is_muted",
    "is_pinned",
    "created_at",
    "updated_at",
    "resource_id",
    "location_id",
    "name",
    "organization_id",
    "subscriber_ids",
    "subscribers",
    "unread_by",
];

/// A validated `fields` selection. `None` inside means every field.
#[derive(Debug, Clone, Default)]
pub struct ThreadFields(Option<Vec<&'static str>>);

impl ThreadFields {
    /// Parses `fields`; an unknown name is a 400 that lists the allowed ones.
    pub fn parse(fields: Option<&str>) -> Result<Self, ServiceError> {
        let Some(fields) = fields else {
            return Ok(Self(None));
        };
        let mut selected = Vec::new();
        for name in fields.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let known = THREAD_FIELDS.iter().find(|f| **f == name).ok_or_else(|| {
                ServiceError::bad_request(
                    "invalid_fields",
                    format!(
                        "unknown field `{name}` in fields; allowed: {}",
                        THREAD_FIELDS.join(", ")
                    ),
                )
            })?;
            selected.push(*known);
        }
        Ok(Self(Some(selected)))
    }

    /// Clears every field that was not asked for; `id` always stays.
    pub fn apply(&self, mut t: Thread) -> Thread {
        let Some(selected) = &self.0 else { return t };
        let keep = |name: &str| selected.contains(&name);
        macro_rules! project {
            ($($field:ident),*) => { $( if !keep(stringify!($field)) { t.$field = None; } )* };
        }
        project!(
            customer_id,
            customer_name,
            customer_email,
            customer_phone,
            store_name,
            store_avatar,
            order_id,
            product_id,
            subject,
            thread_type,
            status,
            priority,
            last_message_at,
            last_message_by,
            unread_count_customer,
            unread_count_store,
            is_archived,
            is_muted,
            is_pinned,
            created_at,
            updated_at,
            resource_id,
            location_id,
            name,
            organization_id,
            subscriber_ids,
            subscribers,
            unread_by
        );
        t
    }
}
