//! Answers written straight from the wire types (`messaging_api::Json`) are byte for byte what
//! poem-openapi's `Json` (through `ToJSON` and a `serde_json::Value`) wrote: same body, same
//! content type, same status.

use chrono::{DateTime, TimeZone, Utc};
use messaging_api::*;
use poem::IntoResponse;
use poem_openapi::types::{Example, ToJSON};

use serde::Serialize;
use uuid::Uuid;

/// Both answers, as (status, content type, body).
fn answers<T: ToJSON + Serialize + Send + Clone>(value: &T) -> [(u16, Option<String>, String); 2] {
    let answer = |response: poem::Response| {
        let status = response.status().as_u16();
        let content_type = response.content_type().map(str::to_owned);
        let body = futures::executor::block_on(response.into_body().into_string())
            .expect("a JSON body is text");
        (status, content_type, body)
    };
    [
        answer(Json(value.clone()).into_response()),
        answer(poem_openapi::payload::Json(value.clone()).into_response()),
    ]
}

fn assert_same<T: ToJSON + Serialize + Send + Clone + std::fmt::Debug>(value: &T) {
    let [direct, through_value] = answers(value);
    assert_eq!(direct, through_value, "for {value:?}");
}

fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos)
        .single()
        .expect("a valid time")
}

/// A message with every optional field, text that needs escaping and a fractional time.
fn full_message() -> Message {
    Message {
        id: Uuid::now_v7(),
        thread_id: Uuid::now_v7(),
        message_content: "He said \"hi\"\n\tthen left \u{1F44B} </script> \\ \u{7}".into(),
        sender_type: SenderType::Customer,
        sender_id: Some(Uuid::new_v4()),
        is_edited: true,
        edited_at: Some(at(1_700_000_000, 123_456_000)),
        is_deleted: false,
        created_at: at(1_700_000_000, 0),
        updated_at: at(1_700_000_001, 500_000_000),
        r#type: MessageType::TrackingUpdate,
        event: Some("order.ready_for_pickup".into()),
        media_urls: vec![
            "https://example.com/a.png".into(),
            "https://example.com/b".into(),
        ],
        reactions: vec![
            Reaction {
                emoji: "\u{1F44D}".into(),
                count: 2,
                subscriber_ids: vec!["org_1".into(), "cus_2".into()],
            },
            Reaction {
                emoji: "+1".into(),
                count: 1,
                subscriber_ids: vec!["user:a.b".into()],
            },
        ],
        subscriber_id: Some("cus_2".into()),
        resource_id: Some("res-9".into()),
        publish_to_channel_at: Some(at(1_800_000_000, 1)),
    }
}

/// The same message with every optional field absent and nothing in its lists.
fn bare_message() -> Message {
    Message {
        sender_id: None,
        edited_at: None,
        event: None,
        media_urls: Vec::new(),
        reactions: Vec::new(),
        subscriber_id: None,
        resource_id: None,
        publish_to_channel_at: None,
        ..full_message()
    }
}

#[test]
fn a_page_of_messages_is_written_as_before() {
    for next_cursor in [Some("abc.def".to_owned()), None] {
        assert_same(&MessageList {
            messages: vec![full_message(), bare_message(), Message::example()],
            pagination: Pagination {
                limit: 50,
                next_cursor,
                has_more: true,
            },
        });
    }
    assert_same(&MessageList {
        messages: Vec::new(),
        pagination: Pagination {
            limit: 1,
            next_cursor: None,
            has_more: false,
        },
    });
}

#[test]
fn threads_with_every_field_or_almost_none_are_written_as_before() {
    let mut thread = Thread::example();
    thread.subscribers = Some(vec![Subscriber::example(), Subscriber::example()]);
    thread.subscriber_ids = Some(vec!["org_1".into()]);
    thread.unread_by = Some(Vec::new());
    thread.recent_messages = Some(vec![full_message(), bare_message()]);
    thread.has_more = Some(false);
    thread.store_avatar = Some("https://example.com/logo.png".into());
    // Only the id, as a `fields=id` projection leaves it.
    let sparse: Thread = poem_openapi::types::ParseFromJSON::parse_from_json(Some(
        serde_json::json!({ "id": thread.id }),
    ))
    .expect("a thread with only its id");
    assert_same(&ThreadList {
        threads: vec![thread.clone(), sparse.clone()],
        pagination: Pagination {
            limit: 50,
            next_cursor: Some("x".into()),
            has_more: true,
        },
    });
    assert_same(&ThreadEnvelope { thread });
    assert_same(&sparse);
}

#[test]
fn every_example_of_the_spec_is_written_as_before() {
    assert_same(&Thread::example());
    assert_same(&Message::example());
    assert_same(&Reaction::example());
    assert_same(&Subscriber::example());
    assert_same(&Channel::example());
    assert_same(&DeletedMessage::example());
    assert_same(&Customer::example());
    assert_same(&Session::example());
    assert_same(&Problem::example());
    assert_same(&WebhookEndpoint::example());
    assert_same(&CreatedWebhookEndpoint::example());
    assert_same(&WebhookDelivery::example());
}

#[test]
fn events_are_written_as_before() {
    let thread = Thread::example();
    assert_same(&EventList {
        events: vec![Event {
            id: "42".into(),
            r#type: EventType::MessageCreated,
            created_at: at(1_700_000_000, 999_999_999),
            thread_id: Some(thread.id),
            data: EventData {
                thread: Some(thread),
                message: Some(full_message()),
                message_id: Some(Uuid::nil()),
                deleted_at: Some(at(0, 0)),
                subscriber: Some(Subscriber::example()),
                channel_id: None,
            },
        }],
        next_after: "42".into(),
    });
}
