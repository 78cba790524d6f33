//! Bounded resources (OWASP API4) end to end, on SQLite and PostgreSQL: subscribers per thread
//! and reactions per caller per message stop at their bounds with 409 and a stable code,
//! subscribers come in pages, and storage grows with what users do (a channel per subscriber
//! set that carries messages, not per set a thread passed through).

use messaging_client::{Client, ResponseValue, types};
use messaging_service::{
    entity::{channel, channel_member, message_reaction, thread_subscriber},
    limits::{MAX_REACTIONS_PER_SUBSCRIBER, MAX_SUBSCRIBERS_PER_THREAD},
};
use messaging_tests::{
    TestApp, both_backends,
    fixtures::{Shop, problem},
};
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::json;
use std::num::NonZeroU32;
use uuid::Uuid;

/// Rows of each table that grows with subscribers: (channels, channel members, subscribers).
async fn row_counts(app: &TestApp) -> (u64, u64, u64) {
    let db = app.service.database();
    (
        channel::Entity::find().count(db).await.unwrap(),
        channel_member::Entity::find().count(db).await.unwrap(),
        thread_subscriber::Entity::find().count(db).await.unwrap(),
    )
}

async fn order_thread(shop: &Shop) -> Uuid {
    let body: types::CreateConversationRequest = serde_json::from_value(json!({
        "customer_id": shop.jane.id, "subject": "Order 1", "message": "Thanks!",
        "resource_id": "order-1",
    }))
    .unwrap();
    shop.store
        .create_conversation()
        .body(body)
        .send()
        .await
        .expect("order thread")
        .into_inner()
        .thread
        .id
}

type Answer<T> = Result<ResponseValue<T>, messaging_client::Error<types::Problem>>;

async fn add_user(store: &Client, thread: Uuid, n: usize) -> Answer<types::SubscriberEnvelope> {
    let body: types::AddSubscriberRequest = serde_json::from_value(
        json!({"type": "user", "id": format!("staff-{n}"), "name": format!("Staff {n:03}")}),
    )
    .unwrap();
    store
        .add_subscriber()
        .id(thread.to_string())
        .body(body)
        .send()
        .await
}

async fn send(store: &Client, thread: Uuid, text: &str) -> Uuid {
    let body: types::SendMessageRequest = serde_json::from_value(json!({"message": text})).unwrap();
    store
        .send_message()
        .id(thread.to_string())
        .body(body)
        .send()
        .await
        .expect("send")
        .into_inner()
        .message
        .id
}

both_backends!(
    subscribers_stop_at_the_bound_and_storage_stays_linear,
    |app| async move {
        let shop = Shop::open(app).await;
        let thread = order_thread(&shop).await;
        // The customer and the store, one channel (the first message's) with their two memberships.
        assert_eq!(row_counts(&shop.app).await, (1, 2, 2));

        // Staff join one at a time up to the bound: no channel for any set in between.
        let max = MAX_SUBSCRIBERS_PER_THREAD as usize;
        for n in 2..max {
            add_user(&shop.store, thread, n)
                .await
                .unwrap_or_else(|e| panic!("staff {n}: {e}"));
        }
        assert_eq!(row_counts(&shop.app).await, (1, 2, max as u64));
        let refused = problem(add_user(&shop.store, thread, max).await);
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (409, "too_many_subscribers")
        );
        assert_eq!(
            row_counts(&shop.app).await,
            (1, 2, max as u64),
            "the refusal changed nothing"
        );

        // Removed subscribers still count (the thread keeps and embeds them); restoring one does not.
        shop.store
            .remove_subscriber()
            .id(thread.to_string())
            .subscriber_id("staff-2")
            .send()
            .await
            .expect("remove staff-2");
        let refused = problem(add_user(&shop.store, thread, max + 1).await);
        assert_eq!(refused.code, "too_many_subscribers");
        add_user(&shop.store, thread, 2)
            .await
            .expect("staff-2 restored");

        // A message into the full set makes its channel: one more channel, its members once.
        send(&shop.store, thread, "Everyone is here").await;
        assert_eq!(row_counts(&shop.app).await, (2, 2 + max as u64, max as u64));
        send(&shop.store, thread, "Still the same set").await;
        assert_eq!(row_counts(&shop.app).await, (2, 2 + max as u64, max as u64));

        // What the thread embeds is bounded: exactly its subscribers.
        let view = shop
            .store
            .get_thread()
            .id(thread.to_string())
            .send()
            .await
            .unwrap()
            .into_inner();
        assert_eq!(view.subscribers.len(), max);

        // listSubscribers pages in join order, nothing repeated or skipped.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut request = shop
                .store
                .list_subscribers()
                .id(thread.to_string())
                .limit(NonZeroU32::new(30).unwrap());
            if let Some(c) = &cursor {
                request = request.cursor(c.as_str());
            }
            let page = request.send().await.unwrap().into_inner();
            pages += 1;
            assert!(page.subscribers.len() <= 30);
            seen.extend(page.subscribers.into_iter().map(|s| s.id));
            match page.pagination.and_then(|p| p.next_cursor) {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, max.div_ceil(30));
        assert_eq!(seen.len(), max);
        // The customer and the store joined first (together), then the staff in the order they
        // came (a restored subscriber keeps its place).
        assert!(seen[..2].contains(&shop.jane.id.to_string()), "{seen:?}");
        assert_eq!(seen[2..5], ["staff-2", "staff-3", "staff-4"]);
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), max);
    }
);

both_backends!(reactions_stop_at_the_bound_per_caller, |app| async move {
    let shop = Shop::open(app).await;
    let thread = order_thread(&shop).await;
    let message = send(&shop.store, thread, "Your order shipped").await;
    let max = MAX_REACTIONS_PER_SUBSCRIBER as usize;
    let jane = Some(shop.jane.token.as_str());
    for n in 0..max {
        react(&shop.public, message, jane, format!("e{n}"))
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    let refused = problem(react(&shop.public, message, jane, "one-more".into()).await);
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (409, "too_many_reactions")
    );
    // Adding one she has is still idempotent, and others react on their own bound.
    react(&shop.public, message, jane, "e0".into())
        .await
        .expect("again");
    react(&shop.store, message, None, "one-more".into())
        .await
        .expect("the store's first");
    let rows = message_reaction::Entity::find()
        .count(shop.app.service.database())
        .await
        .unwrap();
    assert_eq!(rows, max as u64 + 1);
});

async fn react(
    client: &Client,
    message: Uuid,
    token: Option<&str>,
    emoji: String,
) -> Answer<types::MessageEnvelope> {
    let mut request = client.add_reaction().id(message).emoji(emoji);
    if let Some(token) = token {
        request = request.x_auth_token(token.to_owned());
    }
    request.send().await
}
