//! Threads and channels (seed 004) end to end through the generated client, on SQLite and
//! PostgreSQL: resource threads, subscribers, recent messages, message types and media,
//! reactions, channels and scheduled publishing.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use messaging_client::{
    Client,
    types::{self, MessageType, SenderType, SubscriberType, ThreadExpand},
};
use messaging_tests::{
    TestApp, both_backends,
    fixtures::{Shop, page_size, problem, register_customer},
};
use serde_json::json;
use uuid::Uuid;

/// The shared shop, plus this suite's own steps.
struct World(Shop);

impl std::ops::Deref for World {
    type Target = Shop;
    fn deref(&self) -> &Shop {
        &self.0
    }
}

async fn world(app: TestApp) -> World {
    World(Shop::open(app).await)
}

impl World {
    /// The store opens an order thread for Jane.
    async fn order_thread(&self, resource: &str) -> types::Thread {
        let body: types::CreateConversationRequest = serde_json::from_value(json!({
            "customer_id": self.jane.id,
            "subject": format!("Order {resource}"),
            "message": "Thanks for your order!",
            "thread_type": "order_inquiry",
            "resource_id": resource,
            "location_id": "store-downtown",
        }))
        .unwrap();
        self.store
            .create_conversation()
            .body(body)
            .send()
            .await
            .expect("order thread")
            .into_inner()
            .thread
    }

    async fn add_user(&self, thread: &str, id: &str, name: &str) -> types::Subscriber {
        let body: types::AddSubscriberRequest = serde_json::from_value(
            json!({"type": "user", "id": id, "name": name, "email": format!("{id}@acme.example")}),
        )
        .unwrap();
        self.store
            .add_subscriber()
            .id(thread.to_string())
            .body(body)
            .send()
            .await
            .expect("add user")
            .into_inner()
            .subscriber
    }

    async fn send(
        &self,
        client: &Client,
        token: Option<&str>,
        thread: &str,
        body: serde_json::Value,
    ) -> types::Message {
        let body: types::SendMessageRequest = serde_json::from_value(body).unwrap();
        let mut request = client.send_message().id(thread.to_string()).body(body);
        if let Some(token) = token {
            request = request.x_auth_token(token);
        }
        request.send().await.expect("send").into_inner().message
    }

    async fn jane_channels(&self) -> Vec<types::Channel> {
        self.public
            .list_channels()
            .x_auth_token(self.jane.token.as_str())
            .send()
            .await
            .unwrap()
            .into_inner()
            .channels
    }

    async fn channel_as_store(&self, id: Uuid) -> types::Channel {
        self.store
            .get_channel()
            .id(id)
            .send()
            .await
            .unwrap()
            .into_inner()
    }
}

both_backends!(resource_threads_have_predictable_ids, |app| async move {
    let w = world(app).await;
    let thread = w.order_thread("order-8821").await;
    assert_eq!(thread.resource_id.as_deref(), Some("order-8821"));
    assert_eq!(thread.location_id.as_deref(), Some("store-downtown"));
    assert_eq!(thread.name.as_deref(), Some("Order order-8821"));
    assert_eq!(thread.organization_id, Some(w.store_id));

    // thrd_<resource_id> names the thread anywhere an id is taken.
    let alias = w
        .store
        .get_thread()
        .id("thrd_order-8821")
        .send()
        .await
        .unwrap();
    assert_eq!(alias.id, thread.id);
    let reply = w
        .send(
            &w.public,
            Some(&w.jane.token),
            "thrd_order-8821",
            json!({"message": "Where is it?"}),
        )
        .await;
    assert_eq!(
        (reply.thread_id, reply.resource_id.as_deref()),
        (thread.id, Some("order-8821"))
    );
    let messages = w
        .store
        .get_thread_messages()
        .id("thrd_order-8821")
        .send()
        .await
        .unwrap();
    assert_eq!(messages.messages.len(), 2);

    // One thread per resource: a duplicate is 409 and creates nothing.
    let duplicate: types::CreateConversationRequest = serde_json::from_value(
        json!({"customer_id": w.bob.id, "subject": "dup", "message": "dup", "resource_id": "order-8821"}),
    )
    .unwrap();
    let conflict = problem(
        w.store
            .create_conversation()
            .body(duplicate.clone())
            .send()
            .await,
    );
    assert_eq!(
        (conflict.status, conflict.code.as_str()),
        (409, "resource_conflict")
    );
    assert_eq!(
        w.store.list_threads().send().await.unwrap().threads.len(),
        1
    );
    // Another store may use the same resource id.
    let other = w.app.create_store("Other").await;
    let other_store = w.app.client(&other.secret_key_test);
    let bob_elsewhere = register_customer(&other_store, "bob@example.com", "Bob").await;
    let mut elsewhere = duplicate;
    elsewhere.customer_id = Some(bob_elsewhere.id);
    other_store
        .create_conversation()
        .body(elsewhere)
        .send()
        .await
        .expect("same resource, other store");
    // ...and this store's alias still names this store's thread; the other's is invisible here.
    assert_eq!(
        w.store
            .get_thread()
            .id("thrd_order-8821")
            .send()
            .await
            .unwrap()
            .id,
        thread.id
    );
    assert_eq!(
        problem(w.store.get_thread().id("thrd_no-such-order").send().await).status,
        404
    );

    // The thread follows its resource: the store moves it; a customer may not.
    let moved = w
        .store
        .update_thread()
        .id("thrd_order-8821")
        .body_map(|b| b.location_id(Some("store-uptown".parse().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.thread.location_id.as_deref(), Some("store-uptown"));
    let refused = problem(
        w.public
            .update_thread()
            .x_auth_token(w.jane.token.as_str())
            .id("thrd_order-8821")
            .body_map(|b| b.location_id(Some("home".parse().unwrap())))
            .send()
            .await,
    );
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (403, "store_only_field")
    );
    // Malformed ids are 400.
    for id in ["thrd_", "nope", "thrd_bad id"] {
        let response = w
            .app
            .http()
            .get(
                w.app
                    .url(&format!("/v1/messaging/threads/{}", id.replace(' ', "%20"))),
            )
            .bearer_auth(&other.secret_key_test)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(response.status().as_u16(), 400 | 404),
            "{id}: {}",
            response.status()
        );
    }
});

both_backends!(subscribers_and_read_state, |app| async move {
    let w = world(app).await;
    let thread = w.order_thread("order-1").await;
    let id = thread.id.to_string();
    // The customer (a contact) and the store (an organization) are there from the start.
    let ids: HashSet<String> = thread.subscriber_ids.iter().cloned().collect();
    assert_eq!(
        ids,
        HashSet::from([w.jane.id.to_string(), w.store_id.to_string()])
    );
    let subscribers = thread.subscribers.clone();
    let jane = subscribers
        .iter()
        .find(|s| s.type_ == SubscriberType::Contact)
        .unwrap();
    assert_eq!(
        (jane.name.as_str(), jane.email.as_deref()),
        ("Jane Doe", Some("jane@example.com"))
    );

    // The store adds a staff member; a customer may not.
    let sam = w.add_user(&id, "staff-42", "Sam Staff").await;
    assert_eq!(
        (sam.type_, sam.is_archived, sam.viewed_at),
        (SubscriberType::User, false, None)
    );
    let body: types::AddSubscriberRequest =
        serde_json::from_value(json!({"type": "user", "id": "x", "name": "X"})).unwrap();
    let refused = problem(
        w.public
            .add_subscriber()
            .x_auth_token(w.jane.token.as_str())
            .id(id.clone())
            .body(body)
            .send()
            .await,
    );
    assert_eq!(refused.status, 403);
    let listed = w
        .public
        .list_subscribers()
        .x_auth_token(w.jane.token.as_str())
        .id(id.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.subscribers.len(), 3);
    // Bob may not see Jane's thread's subscribers.
    assert_eq!(
        problem(
            w.public
                .list_subscribers()
                .x_auth_token(w.bob.token.as_str())
                .id(id.clone())
                .send()
                .await
        )
        .status,
        403
    );

    // A customer message is unread for the store and for Sam.
    w.send(
        &w.public,
        Some(&w.jane.token),
        &id,
        json!({"message": "Is it ready?"}),
    )
    .await;
    let t = w.store.get_thread().id(id.clone()).send().await.unwrap();
    let unread: HashSet<String> = t.unread_by.clone().into_iter().collect();
    assert_eq!(
        unread,
        HashSet::from([w.store_id.to_string(), "staff-42".to_owned()])
    );

    // Sam acts with the secret key and x-acting-user: he is the sender and the reader.
    let answer = w
        .store
        .send_message()
        .id(id.clone())
        .x_acting_user("staff-42")
        .body_map(|b| b.message("Packing it now."))
        .send()
        .await
        .unwrap()
        .into_inner()
        .message;
    assert_eq!(
        (answer.sender_type, answer.subscriber_id.as_deref()),
        (SenderType::Store, Some("staff-42"))
    );
    let read = w
        .store
        .mark_thread_read()
        .id(id.clone())
        .x_acting_user("staff-42")
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread;
    assert!(read.unread_by.is_empty());
    assert_eq!(read.unread_count_store, Some(0));
    let subscribers = read.subscribers;
    let sam = subscribers.iter().find(|s| s.id == "staff-42").unwrap();
    assert!(sam.viewed_at.is_some());
    let jane = subscribers
        .iter()
        .find(|s| s.type_ == SubscriberType::Contact)
        .unwrap();
    w.public
        .mark_thread_read()
        .x_auth_token(w.jane.token.as_str())
        .id(id.clone())
        .send()
        .await
        .unwrap();
    assert!(jane.viewed_at.is_none(), "contacts never get viewed_at");
    let after = w.store.get_thread().id(id.clone()).send().await.unwrap();
    let jane = after
        .subscribers
        .clone()
        .into_iter()
        .find(|s| s.type_ == SubscriberType::Contact)
        .unwrap();
    assert!(jane.viewed_at.is_none());

    // Someone who is not a subscriber cannot act; a customer token cannot be combined with it.
    let stranger = problem(
        w.store
            .send_message()
            .id(id.clone())
            .x_acting_user("staff-99")
            .body_map(|b| b.message("hi"))
            .send()
            .await,
    );
    assert_eq!(
        (stranger.status, stranger.code.as_str()),
        (403, "not_a_subscriber")
    );
    let mixed = problem(
        w.public
            .send_message()
            .x_auth_token(w.jane.token.as_str())
            .x_acting_user("staff-42")
            .id(id.clone())
            .body_map(|b| b.message("hi"))
            .send()
            .await,
    );
    assert_eq!(mixed.status, 400);

    // Removing archives the subscriber and keeps its details; it no longer counts as active.
    let removed = w
        .store
        .remove_subscriber()
        .id(id.clone())
        .subscriber_id("staff-42")
        .send()
        .await
        .unwrap()
        .into_inner();
    assert!(removed.subscriber.is_archived);
    assert_eq!(removed.subscriber.name, "Sam Staff");
    let t = w.store.get_thread().id(id.clone()).send().await.unwrap();
    assert!(!t.subscriber_ids.clone().contains(&"staff-42".to_owned()));
    assert!(
        t.subscribers
            .clone()
            .iter()
            .any(|s| s.id == "staff-42" && s.is_archived)
    );
    // Sam's old message still names him.
    let history = w
        .store
        .get_thread_messages()
        .id(id.clone())
        .send()
        .await
        .unwrap();
    assert!(
        history
            .messages
            .iter()
            .any(|m| m.subscriber_id.as_deref() == Some("staff-42"))
    );
    assert_eq!(
        problem(
            w.store
                .remove_subscriber()
                .id(id.clone())
                .subscriber_id("staff-42")
                .send()
                .await
        )
        .status,
        404
    );
    // Adding him again restores him.
    assert!(!w.add_user(&id, "staff-42", "Sam Staff").await.is_archived);
});

both_backends!(expand_recent_messages, |app| async move {
    let w = world(app).await;
    let thread = w.order_thread("order-2").await;
    let id = thread.id.to_string();
    for i in 0..155 {
        w.send(
            &w.store,
            None,
            &id,
            json!({"message": format!("update {i}")}),
        )
        .await;
    }
    let plain = w.store.get_thread().id(id.clone()).send().await.unwrap();
    assert!(plain.recent_messages.is_empty() && plain.has_more.is_none());
    let expanded = w
        .store
        .get_thread()
        .id(id.clone())
        .expand(ThreadExpand::RecentMessages)
        .send()
        .await
        .unwrap();
    let recent = expanded.recent_messages.clone();
    assert_eq!(recent.len(), 150);
    assert_eq!(expanded.has_more, Some(true));
    assert_eq!(recent.last().unwrap().message_content, "update 154");
    assert_eq!(recent.first().unwrap().message_content, "update 5");
    let small = w.order_thread("order-3").await;
    let expanded = w
        .store
        .get_thread()
        .id(small.id.to_string())
        .expand(ThreadExpand::RecentMessages)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (expanded.recent_messages.len(), expanded.has_more),
        (1, Some(false))
    );
});

both_backends!(message_types_and_media, |app| async move {
    let w = world(app).await;
    let thread = w.order_thread("order-4").await;
    let id = thread.id.to_string();
    let before = w
        .store
        .get_thread()
        .id(id.clone())
        .send()
        .await
        .unwrap()
        .unread_count_customer
        .unwrap();
    // Only the store sends non-text types; they are system messages that notify the customer.
    let reminder = w
        .send(&w.store, None, &id, json!({"message": "Your order is ready for pickup.", "type": "pickup_reminder", "event": "order.ready_for_pickup"}))
        .await;
    assert_eq!(reminder.type_, MessageType::PickupReminder);
    assert_eq!(reminder.sender_type, SenderType::System);
    assert_eq!(reminder.event.as_deref(), Some("order.ready_for_pickup"));
    let after = w.store.get_thread().id(id.clone()).send().await.unwrap();
    assert_eq!(after.unread_count_customer.unwrap(), before + 1);
    assert_eq!(after.last_message_by, Some(SenderType::System));
    let body: types::SendMessageRequest =
        serde_json::from_value(json!({"message": "x", "type": "tracking_update"})).unwrap();
    let refused = problem(
        w.public
            .send_message()
            .x_auth_token(w.jane.token.as_str())
            .id(id.clone())
            .body(body)
            .send()
            .await,
    );
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (403, "store_only_message_type")
    );
    // System messages are never edited, not even by the store.
    let edit = problem(
        w.store
            .edit_message()
            .id(reminder.id)
            .body_map(|b| b.message_content("x"))
            .send()
            .await,
    );
    assert_eq!(edit.status, 403);

    // Media: https URLs only, at most 10.
    let photo = w
        .send(
            &w.public,
            Some(&w.jane.token),
            &id,
            json!({"message": "Box was damaged", "media_urls": ["https://cdn.example.com/a.jpg"]}),
        )
        .await;
    assert_eq!(
        photo.media_urls,
        vec!["https://cdn.example.com/a.jpg".to_owned()]
    );
    assert_eq!(photo.type_, MessageType::Text);
    let path = format!("/v1/messaging/threads/{id}/messages");
    for media in [
        json!(["http://cdn.example.com/a.jpg"]),
        json!(["javascript:alert(1)"]),
        json!(["https://"]),
        json!(
            (0..11)
                .map(|i| format!("https://cdn.example.com/{i}.jpg"))
                .collect::<Vec<_>>()
        ),
        json!([format!("https://cdn.example.com/{}", "a".repeat(2100))]),
        json!([42]),
    ] {
        let response = w
            .app
            .http()
            .post(w.app.url(&path))
            .bearer_auth(&w.secret_key)
            .json(&json!({"message": "x", "media_urls": media}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{media}");
    }
});

both_backends!(
    reactions_are_idempotent_per_caller_and_emoji,
    |app| async move {
        let w = world(app).await;
        let thread = w.order_thread("order-5").await;
        let message = w
            .send(
                &w.public,
                Some(&w.jane.token),
                &thread.id.to_string(),
                json!({"message": "Thanks!"}),
            )
            .await;
        let jane = w.jane.token.as_str();
        let thumbs = "\u{1F44D}";

        let once = w
            .public
            .add_reaction()
            .x_auth_token(jane)
            .id(message.id)
            .emoji(thumbs)
            .send()
            .await
            .unwrap();
        let twice = w
            .public
            .add_reaction()
            .x_auth_token(jane)
            .id(message.id)
            .emoji(thumbs)
            .send()
            .await
            .unwrap();
        assert_eq!(once.message.reactions, twice.message.reactions);
        assert_eq!(twice.message.reactions.len(), 1);
        assert_eq!(twice.message.reactions[0].count, 1);
        // The store reacts too (anyone who may read the thread may react).
        let both = w
            .store
            .add_reaction()
            .id(message.id)
            .emoji(thumbs)
            .send()
            .await
            .unwrap()
            .into_inner()
            .message;
        let reaction = &both.reactions[0];
        assert_eq!((reaction.emoji.as_str(), reaction.count), (thumbs, 2));
        assert_eq!(
            reaction.subscriber_ids,
            vec![w.jane.id.to_string(), w.store_id.to_string()]
        );
        w.store
            .add_reaction()
            .id(message.id)
            .emoji("tada")
            .send()
            .await
            .unwrap();
        // Lists show reactions too.
        let page = w
            .store
            .get_thread_messages()
            .id(thread.id.to_string())
            .send()
            .await
            .unwrap();
        let listed = page.messages.iter().find(|m| m.id == message.id).unwrap();
        assert_eq!(
            listed
                .reactions
                .iter()
                .map(|r| (r.emoji.as_str(), r.count))
                .collect::<Vec<_>>(),
            vec![(thumbs, 2), ("tada", 1)]
        );
        // Removing is idempotent and only removes the caller's own.
        let removed = w
            .public
            .remove_reaction()
            .x_auth_token(jane)
            .id(message.id)
            .emoji(thumbs)
            .send()
            .await
            .unwrap();
        assert_eq!(
            removed.message.reactions[0].subscriber_ids,
            vec![w.store_id.to_string()]
        );
        let again = w
            .public
            .remove_reaction()
            .x_auth_token(jane)
            .id(message.id)
            .emoji(thumbs)
            .send()
            .await
            .unwrap();
        assert_eq!(again.message.reactions, removed.message.reactions);
        // Bob may not react in Jane's thread; another store cannot even see the message.
        assert_eq!(
            problem(
                w.public
                    .add_reaction()
                    .x_auth_token(w.bob.token.as_str())
                    .id(message.id)
                    .emoji(thumbs)
                    .send()
                    .await
            )
            .status,
            403
        );
        let other = w.app.create_store("Other").await;
        assert_eq!(
            problem(
                w.app
                    .client(&other.secret_key_test)
                    .add_reaction()
                    .id(message.id)
                    .emoji(thumbs)
                    .send()
                    .await
            )
            .status,
            404
        );
    }
);

both_backends!(
    channels_gather_threads_with_the_same_subscribers,
    |app| async move {
        let w = world(app).await;
        let first = w.order_thread("order-10").await;
        let second = w.order_thread("order-11").await;
        // Same subscribers (Jane and the store): one channel, both threads publish into it.
        let channels = w.jane_channels().await;
        assert_eq!(channels.len(), 1);
        let channel = &channels[0];
        assert_eq!(channel.organization_id, w.store_id);
        let mut publishers = channel.publisher_ids.clone();
        publishers.sort();
        assert_eq!(
            publishers,
            vec!["order-10".to_owned(), "order-11".to_owned()]
        );
        let members: HashSet<String> = channel.subscriber_ids.iter().cloned().collect();
        assert_eq!(
            members,
            HashSet::from([w.jane.id.to_string(), w.store_id.to_string()])
        );
        assert_eq!(channel.name, "Acme, Jane Doe");
        assert_eq!(channel.subscriber_hash.len(), 64);
        // Lists carry no messages; getChannel does.
        assert!(channel.recent_messages.is_empty());
        let full = w.channel_as_store(channel.id).await;
        assert_eq!(full.recent_messages.len(), 2);
        assert_eq!(full.has_more, Some(false));

        // Adding a staff member to one thread moves it to a new channel; old messages stay put.
        w.add_user(&second.id.to_string(), "staff-7", "Ali Staff")
            .await;
        w.send(
            &w.store,
            None,
            &second.id.to_string(),
            json!({"message": "Ali will help you."}),
        )
        .await;
        w.send(
            &w.public,
            Some(&w.jane.token),
            &first.id.to_string(),
            json!({"message": "And the first order?"}),
        )
        .await;
        let store_channels = w
            .store
            .list_channels()
            .send()
            .await
            .unwrap()
            .into_inner()
            .channels;
        assert_eq!(store_channels.len(), 2);
        assert_eq!(
            store_channels[0].publisher_ids.len() + store_channels[1].publisher_ids.len(),
            2
        );
        let with_ali = store_channels
            .iter()
            .find(|c| c.subscriber_ids.contains(&"staff-7".to_owned()))
            .unwrap();
        assert_eq!(with_ali.publisher_ids, vec!["order-11".to_owned()]);
        let ali = w.channel_as_store(with_ali.id).await;
        assert_eq!(
            ali.recent_messages
                .iter()
                .map(|m| m.message_content.as_str())
                .collect::<Vec<_>>(),
            vec!["Ali will help you."]
        );
        // Jane belongs to both; Bob to none, and Jane's channel is 404 for him.
        assert_eq!(w.jane_channels().await.len(), 2);
        assert!(
            w.public
                .list_channels()
                .x_auth_token(w.bob.token.as_str())
                .send()
                .await
                .unwrap()
                .channels
                .is_empty()
        );
        assert_eq!(
            problem(
                w.public
                    .get_channel()
                    .x_auth_token(w.bob.token.as_str())
                    .id(with_ali.id)
                    .send()
                    .await
            )
            .status,
            404
        );
        // Another mode sees none of it.
        let other = w.app.create_store("Other").await;
        assert!(
            w.app
                .client(&other.secret_key_test)
                .list_channels()
                .send()
                .await
                .unwrap()
                .channels
                .is_empty()
        );

        // Channel messages in cursor pages, every published message exactly once.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = w
                .store
                .get_channel_messages()
                .id(channel.id)
                .limit(page_size(2));
            if let Some(c) = &cursor {
                request = request.cursor(c.as_str());
            }
            let page = request.send().await.unwrap().into_inner();
            seen.extend(page.messages.iter().map(|m| m.message_content.clone()));
            match page.pagination.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(
            seen,
            vec![
                "Thanks for your order!",
                "Thanks for your order!",
                "And the first order?"
            ]
        );
    }
);

both_backends!(scheduled_messages_wait_for_their_time, |app| async move {
    let w = world(app).await;
    let thread = w.order_thread("order-20").await;
    let id = thread.id.to_string();
    let due = Utc::now() + Duration::milliseconds(1_500);
    let scheduled = w
        .send(&w.store, None, &id, json!({"message": "Reminder: pick up today", "type": "pickup_reminder", "publish_to_channel_at": due}))
        .await;
    assert!(scheduled.publish_to_channel_at.is_some());
    // In the thread at once.
    let history = w
        .public
        .get_thread_messages()
        .x_auth_token(w.jane.token.as_str())
        .id(id.clone())
        .send()
        .await
        .unwrap();
    assert!(history.messages.iter().any(|m| m.id == scheduled.id));
    // Pending in the channel: the store sees it, the customer does not.
    let channel_id = w.jane_channels().await[0].id;
    let store_view = w.channel_as_store(channel_id).await;
    assert_eq!(
        store_view
            .pending_messages
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![scheduled.id]
    );
    assert_eq!(
        store_view.scheduled_publish_at,
        scheduled.publish_to_channel_at
    );
    assert!(
        store_view
            .recent_messages
            .iter()
            .all(|m| m.id != scheduled.id)
    );
    let jane_view = w
        .public
        .get_channel()
        .x_auth_token(w.jane.token.as_str())
        .id(channel_id)
        .send()
        .await
        .unwrap();
    assert!(jane_view.pending_messages.is_empty() && jane_view.scheduled_publish_at.is_none());
    assert!(
        jane_view
            .recent_messages
            .clone()
            .iter()
            .all(|m| m.id != scheduled.id)
    );
    // Not due yet: the publisher leaves it.
    assert_eq!(w.app.service.publish_due().await.unwrap(), 0);

    // The server's background publisher moves it once due.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let view = w
            .public
            .get_channel()
            .x_auth_token(w.jane.token.as_str())
            .id(channel_id)
            .send()
            .await
            .unwrap();
        if view
            .recent_messages
            .clone()
            .iter()
            .any(|m| m.id == scheduled.id)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled message was not published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let store_view = w.channel_as_store(channel_id).await;
    assert!(store_view.pending_messages.is_empty() && store_view.scheduled_publish_at.is_none());
    // Exactly once: nothing is left to publish, and the channel lists it once.
    assert_eq!(w.app.service.publish_due().await.unwrap(), 0);
    let page = w
        .store
        .get_channel_messages()
        .id(channel_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.messages
            .iter()
            .filter(|m| m.id == scheduled.id)
            .count(),
        1
    );
    // A time in the past publishes at once.
    let past = w
        .send(
            &w.store,
            None,
            &id,
            json!({"message": "late", "publish_to_channel_at": Utc::now() - Duration::hours(1)}),
        )
        .await;
    let page = w
        .store
        .get_channel_messages()
        .id(channel_id)
        .order(types::SortOrder::Desc)
        .send()
        .await
        .unwrap();
    assert_eq!(page.messages[0].id, past.id);
});

// The README's walkthrough: an order thread from creation to a scheduled pickup reminder
// landing in the customer's channel.
both_backends!(readme_order_thread_walkthrough, |app| async move {
    let w = world(app).await;
    let order = w.order_thread("order-8821").await;
    w.add_user("thrd_order-8821", "staff-42", "Sam Staff").await;
    let due = Utc::now() + Duration::milliseconds(300);
    let reminder = w
        .store
        .send_message()
        .id("thrd_order-8821")
        .x_acting_user("staff-42")
        .body(
            serde_json::from_value::<types::SendMessageRequest>(json!({
                "message": "Your order is ready for pickup at Downtown.",
                "type": "pickup_reminder",
                "event": "order.ready_for_pickup",
                "publish_to_channel_at": due,
            }))
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .into_inner()
        .message;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    w.app.service.publish_due().await.unwrap();
    let channels = w.jane_channels().await;
    let channel = channels
        .iter()
        .find(|c| c.publisher_ids.contains(&"order-8821".to_owned()))
        .unwrap();
    let view = w
        .public
        .get_channel()
        .x_auth_token(w.jane.token.as_str())
        .id(channel.id)
        .send()
        .await
        .unwrap();
    let landed = view
        .recent_messages
        .clone()
        .into_iter()
        .find(|m| m.id == reminder.id)
        .expect("landed");
    assert_eq!(
        (landed.type_, landed.subscriber_id.as_deref()),
        (MessageType::PickupReminder, Some("staff-42"))
    );
    assert_eq!(landed.resource_id.as_deref(), Some("order-8821"));
    let thread = w
        .public
        .get_thread()
        .x_auth_token(w.jane.token.as_str())
        .id(order.id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(thread.unread_count_customer, Some(2));
});
