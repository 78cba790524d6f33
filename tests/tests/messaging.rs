//! Messaging end to end through the generated client, on SQLite and PostgreSQL: seeds 000 to 003.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use messaging_client::{
    Error,
    types::{self, SenderType, SortOrder, ThreadPriority, ThreadStatus, ThreadType},
};
use messaging_service::entity::{message, thread};
use messaging_tests::{
    TestApp, both_backends,
    fixtures::{Shop, page_size, problem, register_customer},
};
use sea_orm::{ActiveValue::Set, EntityTrait};
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

fn conversation_body(customer_id: Option<Uuid>, subject: &str) -> types::CreateConversationRequest {
    serde_json::from_value(json!({
        "customer_id": customer_id,
        "subject": subject,
        "message": "My package arrived but the headphones were missing.",
    }))
    .unwrap()
}

impl World {
    /// Jane starts a conversation; returns the thread id.
    async fn jane_thread(&self, subject: &str) -> Uuid {
        self.public
            .create_conversation()
            .x_auth_token(self.jane.token.as_str())
            .body(conversation_body(Some(self.jane.id), subject))
            .send()
            .await
            .expect("create conversation")
            .into_inner()
            .thread
            .id
    }

    async fn store_reply(&self, thread: Uuid, text: &str) -> types::Message {
        self.store
            .send_message()
            .id(thread.to_string())
            .body_map(|b| b.message(text))
            .send()
            .await
            .expect("store reply")
            .into_inner()
            .message
    }

    /// The texts of the thread's first 50 live messages, oldest first, as the store reads them.
    async fn texts(&self, thread: Uuid) -> Vec<String> {
        self.store
            .get_thread_messages()
            .id(thread.to_string())
            .limit(page_size(50))
            .send()
            .await
            .expect("the thread's messages")
            .into_inner()
            .messages
            .into_iter()
            .map(|m| m.message_content)
            .collect()
    }

    async fn jane_says(&self, thread: Uuid, text: &str) -> types::Message {
        self.public
            .send_message()
            .x_auth_token(self.jane.token.as_str())
            .id(thread.to_string())
            .body_map(|b| b.message(text))
            .send()
            .await
            .expect("customer message")
            .into_inner()
            .message
    }

    async fn set_status(&self, thread: Uuid, status: ThreadStatus) {
        self.store
            .update_thread()
            .id(thread.to_string())
            .body_map(|b| b.status(Some(status)))
            .send()
            .await
            .expect("set status");
    }

    /// Raw request with the given key and optional token, for inputs the typed client refuses to send.
    fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .app
            .http()
            .request(method, self.app.url(path))
            .bearer_auth(key);
        if let Some(token) = token {
            request = request.header("x-auth-token", token);
        }
        request
    }
}

async fn problem_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "status {status}: content type {content_type}"
    );
    (status, response.json().await.expect("problem body"))
}

both_backends!(seed_example_create_conversation, |app| async move {
    let w = world(app).await;
    let body: types::CreateConversationRequest = serde_json::from_value(json!({
        "customer_id": w.jane.id,
        "customer_name": "Jane Doe",
        "customer_email": "jane@example.com",
        "subject": "Missing Item - Order #8821",
        "message": "My package arrived but the headphones were missing.",
        "priority": "high",
        "thread_type": "order_inquiry",
        "order_id": "order-uuid-abc"
    }))
    .unwrap();
    let created = w
        .public
        .create_conversation()
        .x_auth_token(w.jane.token.as_str())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let conversation = created.into_inner();
    let (thread, message) = (conversation.thread, conversation.message);
    assert_eq!(thread.customer_id, Some(w.jane.id));
    assert_eq!(
        thread.subject.as_deref(),
        Some("Missing Item - Order #8821")
    );
    assert_eq!(thread.status, Some(ThreadStatus::Active));
    assert_eq!(thread.priority, Some(ThreadPriority::High));
    assert_eq!(thread.thread_type, Some(ThreadType::OrderInquiry));
    assert_eq!(thread.order_id.as_deref(), Some("order-uuid-abc"));
    assert_eq!(thread.store_name.as_deref(), Some("Acme"));
    assert_eq!(
        (thread.unread_count_store, thread.unread_count_customer),
        (Some(1), Some(0))
    );
    assert_eq!(thread.last_message_by, Some(SenderType::Customer));
    assert_eq!(thread.last_message_at, Some(message.created_at));
    assert_eq!(message.thread_id, thread.id);
    assert_eq!(message.sender_type, SenderType::Customer);
    assert_eq!(message.sender_id, Some(w.jane.id));
    assert!(!message.is_edited && !message.is_deleted);

    // The store may start a conversation for one of its customers, but must say which.
    let by_store = w
        .store
        .create_conversation()
        .body(conversation_body(Some(w.bob.id), "Your order"))
        .send()
        .await;
    let by_store = by_store.unwrap().into_inner();
    assert_eq!(by_store.message.sender_type, SenderType::Store);
    assert_eq!(by_store.thread.unread_count_customer, Some(1));
    let missing = problem(
        w.store
            .create_conversation()
            .body(conversation_body(None, "x"))
            .send()
            .await,
    );
    assert_eq!(
        (missing.status, missing.code.as_str()),
        (400, "customer_id_required")
    );
    let unknown = problem(
        w.store
            .create_conversation()
            .body(conversation_body(Some(Uuid::now_v7()), "x"))
            .send()
            .await,
    );
    assert_eq!(
        (unknown.status, unknown.code.as_str()),
        (404, "customer_not_found")
    );
    // gateByCustomerId on the body.
    let gate = w
        .public
        .create_conversation()
        .x_auth_token(w.jane.token.as_str())
        .body(conversation_body(Some(w.bob.id), "Not mine"))
        .send()
        .await;
    assert_eq!(problem(gate).status, 403);
});

both_backends!(list_threads_orders_filters_and_gates, |app| async move {
    let w = world(app).await;
    let old = w.jane_thread("old").await;
    let pinned = w.jane_thread("pinned").await;
    let newest = w.jane_thread("newest").await;
    let _bobs = w
        .public
        .create_conversation()
        .x_auth_token(w.bob.token.as_str())
        .body(conversation_body(None, "bob's"))
        .send()
        .await
        .unwrap();
    w.public
        .update_thread()
        .x_auth_token(w.jane.token.as_str())
        .id(pinned.to_string())
        .body_map(|b| b.pinned(Some(true)))
        .send()
        .await
        .unwrap();

    // Seed 000's call: the customer lists its own threads; pinned first, then newest first.
    let page = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .customer_id(w.jane.id)
        .send()
        .await
        .unwrap();
    let ids: Vec<Uuid> = page.threads.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![pinned, newest, old]);
    assert_eq!(page.pagination.limit, 50);
    assert!(!page.pagination.has_more && page.pagination.next_cursor.is_none());
    // Without customer_id a customer still only sees its own threads.
    let own = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(own.threads.len(), 3);
    // gateByCustomerId: another customer's id is 403.
    let gate = problem(
        w.public
            .list_threads()
            .x_auth_token(w.jane.token.as_str())
            .customer_id(w.bob.id)
            .send()
            .await,
    );
    assert_eq!(
        (gate.status, gate.code.as_str()),
        (403, "customer_mismatch")
    );
    // The store's inbox: every customer's threads.
    let inbox = w.store.list_threads().send().await.unwrap();
    assert_eq!(inbox.threads.len(), 4);
    assert_eq!(inbox.threads[0].id, pinned);

    // Filters.
    w.set_status(old, ThreadStatus::Resolved).await;
    let resolved = w
        .store
        .list_threads()
        .status(ThreadStatus::Resolved)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resolved.threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![old]
    );
    w.store
        .update_thread()
        .id(newest.to_string())
        .body_map(|b| b.priority(Some(ThreadPriority::Urgent)))
        .send()
        .await
        .unwrap();
    let urgent = w
        .store
        .list_threads()
        .priority(ThreadPriority::Urgent)
        .send()
        .await
        .unwrap();
    assert_eq!(
        urgent.threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![newest]
    );
    let general = w
        .store
        .list_threads()
        .thread_type(ThreadType::General)
        .send()
        .await
        .unwrap();
    assert_eq!(general.threads.len(), 4);
    let complaints = w
        .store
        .list_threads()
        .thread_type(ThreadType::Complaint)
        .send()
        .await
        .unwrap();
    assert!(complaints.threads.is_empty());
    w.public
        .update_thread()
        .x_auth_token(w.jane.token.as_str())
        .id(old.to_string())
        .body_map(|b| b.archived(Some(true)))
        .send()
        .await
        .unwrap();
    let archived = w.store.list_threads().archived(true).send().await.unwrap();
    assert_eq!(
        archived.threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![old]
    );
    let active = w.store.list_threads().archived(false).send().await.unwrap();
    assert_eq!(active.threads.len(), 3);

    // unread is reader-relative: the store has unread customer messages everywhere; Jane has none
    // until the store replies.
    let store_unread = w.store.list_threads().unread(true).send().await.unwrap();
    assert_eq!(store_unread.threads.len(), 4);
    let jane_unread = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .unread(true)
        .send()
        .await
        .unwrap();
    assert!(jane_unread.threads.is_empty());
    w.store_reply(newest, "We are on it.").await;
    let jane_unread = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .unread(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        jane_unread.threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![newest]
    );
    let read = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .unread(false)
        .send()
        .await
        .unwrap();
    assert_eq!(read.threads.len(), 2);
});

both_backends!(list_threads_fields_projection, |app| async move {
    let w = world(app).await;
    w.jane_thread("projected").await;
    // Seed 000's example projection.
    let page = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .customer_id(w.jane.id)
        .fields("id,subject,status,is_pinned,unread_count_store")
        .send()
        .await
        .unwrap();
    let thread = &page.threads[0];
    assert_eq!(thread.subject.as_deref(), Some("projected"));
    assert_eq!(thread.status, Some(ThreadStatus::Active));
    assert_eq!(
        (thread.is_pinned, thread.unread_count_store),
        (Some(false), Some(1))
    );
    assert_eq!(
        (thread.customer_id, thread.priority, thread.created_at),
        (None, None, None)
    );
    // id is always returned.
    let page = w
        .store
        .list_threads()
        .fields("subject")
        .send()
        .await
        .unwrap();
    assert_eq!(page.threads[0].subject.as_deref(), Some("projected"));
    assert!(page.threads[0].status.is_none());
    let one = w
        .store
        .get_thread()
        .id(page.threads[0].id.to_string())
        .fields("priority,is_muted")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (one.priority, one.is_muted, one.subject.as_deref()),
        (Some(ThreadPriority::Normal), Some(false), None)
    );
    // An unknown field is 400 and names the allowed ones.
    let bad = problem(w.store.list_threads().fields("id,password").send().await);
    assert_eq!((bad.status, bad.code.as_str()), (400, "invalid_fields"));
    assert!(bad.detail.unwrap().contains("unread_count_customer"));
});

/// Inserts `count` threads for `customer` that all share one `last_message_at`.
async fn threads_at_one_instant(
    w: &World,
    customer: Uuid,
    count: usize,
    at: DateTime<Utc>,
) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let rows = ids.iter().map(|id| thread::ActiveModel {
        id: Set(*id),
        store_id: Set(w.store_id),
        mode: Set("test".into()),
        customer_id: Set(customer),
        customer_name: Set(None),
        customer_email: Set(None),
        customer_phone: Set(None),
        order_id: Set(None),
        product_id: Set(None),
        subject: Set("same instant".into()),
        thread_type: Set("general".into()),
        status: Set("active".into()),
        priority: Set("normal".into()),
        last_message_at: Set(at),
        last_message_by: Set(Some("customer".into())),
        unread_count_customer: Set(0),
        unread_count_store: Set(0),
        is_archived: Set(false),
        is_muted: Set(false),
        is_pinned: Set(false),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    });
    thread::Entity::insert_many(rows)
        .exec(w.app.service.database())
        .await
        .unwrap();
    ids
}

both_backends!(thread_cursors_never_skip_or_repeat, |app| async move {
    let w = world(app).await;
    let instant = chrono::SubsecRound::trunc_subsecs(Utc::now() - chrono::Duration::hours(1), 6);
    let shared = threads_at_one_instant(&w, w.jane.id, 230, instant).await;
    let mut expected: HashSet<Uuid> = shared.iter().copied().collect();
    let moved = shared[100];

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = w
            .public
            .list_threads()
            .x_auth_token(w.jane.token.as_str())
            .limit(page_size(17));
        if let Some(c) = &cursor {
            request = request.cursor(c.as_str());
        }
        let page = request.send().await.unwrap().into_inner();
        pages += 1;
        seen.extend(page.threads.iter().map(|t| t.id));
        if pages == 3 {
            // A new message arrives mid-pagination: that thread jumps to the top.
            w.jane_says(moved, "still waiting").await;
        }
        match page.pagination.next_cursor {
            Some(next) => {
                assert!(page.pagination.has_more);
                cursor = Some(next);
            }
            None => break,
        }
    }
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a thread was repeated");
    expected.remove(&moved);
    assert!(
        expected.is_subset(&unique),
        "a thread that did not move was skipped"
    );
    assert_eq!(pages, 230usize.div_ceil(17).max(pages));

    // Cursors are opaque and only valid for the list they came from.
    let first = w
        .public
        .list_threads()
        .x_auth_token(w.jane.token.as_str())
        .limit(page_size(5))
        .send()
        .await
        .unwrap();
    let cursor = first.pagination.next_cursor.clone().unwrap();
    let other_list = problem(w.store.list_threads().cursor(cursor.as_str()).send().await);
    assert_eq!(
        (other_list.status, other_list.code.as_str()),
        (400, "invalid_cursor")
    );
    let forged = problem(
        w.store
            .list_threads()
            .cursor("eyJ0IjoxLCJpIjoiMDAwIn0")
            .send()
            .await,
    );
    assert_eq!(
        (forged.status, forged.code.as_str()),
        (400, "invalid_cursor")
    );
});

both_backends!(messages_pages_orders_and_hides_deleted, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread("history").await;
    let mut sent = Vec::new();
    for i in 0..11 {
        sent.push(if i % 2 == 0 {
            w.jane_says(thread, &format!("c{i}")).await.id
        } else {
            w.store_reply(thread, &format!("s{i}")).await.id
        });
    }
    let deleted = sent[4];
    w.public
        .delete_message()
        .x_auth_token(w.jane.token.as_str())
        .id(deleted)
        .send()
        .await
        .unwrap();

    let collect = |order: SortOrder| {
        let w = &w;
        async move {
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut request = w
                    .public
                    .get_thread_messages()
                    .x_auth_token(w.jane.token.as_str())
                    .id(thread.to_string())
                    .order(order)
                    .limit(page_size(4));
                if let Some(c) = &cursor {
                    request = request.cursor(c.as_str());
                }
                let page = request.send().await.unwrap().into_inner();
                all.extend(page.messages.iter().map(|m| (m.id, m.is_deleted)));
                match page.pagination.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            all
        }
    };
    let asc = collect(SortOrder::Asc).await;
    let desc = collect(SortOrder::Desc).await;
    // The first message (from createConversation) plus 11, minus the deleted one.
    assert_eq!(asc.len(), 11);
    assert!(
        asc.iter()
            .all(|(id, is_deleted)| *id != deleted && !is_deleted)
    );
    let asc_ids: Vec<Uuid> = asc.iter().map(|(id, _)| *id).collect();
    let mut reversed: Vec<Uuid> = desc.iter().map(|(id, _)| *id).collect();
    reversed.reverse();
    assert_eq!(asc_ids, reversed);
    assert_eq!(asc_ids.last(), sent.last());

    // The default page is 50, in ascending order.
    let page = w
        .store
        .get_thread_messages()
        .id(thread.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(page.pagination.limit, 50);
    assert_eq!(
        page.messages.first().map(|m| m.sender_type),
        Some(SenderType::Customer)
    );
    // Limits outside 1 to 200 and unknown orders are 400.
    for query in ["limit=0", "limit=201", "order=sideways", "cursor=%25%25"] {
        let response = w
            .raw(
                reqwest::Method::GET,
                &format!("/v1/messaging/threads/{thread}/messages?{query}"),
                &w.secret_key,
                None,
            )
            .send()
            .await
            .unwrap();
        let (status, body) = problem_of(response).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
});

both_backends!(
    send_message_moves_counters_and_lifecycle,
    |app| async move {
        let w = world(app).await;
        let thread = w.jane_thread("counters").await;
        let before = w.thread_as_store(thread).await;

        let reply = w
            .store_reply(
                thread,
                "We've received your request and are looking into it.",
            )
            .await;
        assert_eq!(
            (reply.sender_type, reply.sender_id),
            (SenderType::Store, Some(w.store_id))
        );
        let after = w.thread_as_store(thread).await;
        assert_eq!(after.unread_count_customer, Some(1));
        assert_eq!(after.unread_count_store, Some(1));
        assert_eq!(after.last_message_by, Some(SenderType::Store));
        assert_eq!(after.last_message_at, Some(reply.created_at));
        assert!(after.last_message_at > before.last_message_at);

        // Reader-relative read marks.
        let read = w
            .public
            .mark_thread_read()
            .x_auth_token(w.jane.token.as_str())
            .id(thread.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                read.thread.unread_count_customer,
                read.thread.unread_count_store
            ),
            (Some(0), Some(1))
        );
        let read = w
            .store
            .mark_thread_read()
            .id(thread.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                read.thread.unread_count_customer,
                read.thread.unread_count_store
            ),
            (Some(0), Some(0))
        );

        // A customer message reopens a resolved thread; a store message does not.
        w.set_status(thread, ThreadStatus::Resolved).await;
        w.store_reply(thread, "Anything else?").await;
        assert_eq!(
            w.thread_as_store(thread).await.status,
            Some(ThreadStatus::Resolved)
        );
        w.jane_says(thread, "Yes, one more thing").await;
        let reopened = w.thread_as_store(thread).await;
        assert_eq!(reopened.status, Some(ThreadStatus::Active));
        assert_eq!(reopened.unread_count_store, Some(1));

        // A closed thread takes no messages, from anyone, and nothing changes.
        w.set_status(thread, ThreadStatus::Closed).await;
        let closed_before = w.thread_as_store(thread).await;
        let refused = problem(
            w.public
                .send_message()
                .x_auth_token(w.jane.token.as_str())
                .id(thread.to_string())
                .body_map(|b| b.message("hello?"))
                .send()
                .await,
        );
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (409, "thread_closed")
        );
        let refused = problem(
            w.store
                .send_message()
                .id(thread.to_string())
                .body_map(|b| b.message("hello?"))
                .send()
                .await,
        );
        assert_eq!(refused.status, 409);
        assert_eq!(w.thread_as_store(thread).await, closed_before);
    }
);

both_backends!(concurrent_messages_never_lose_a_count, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread("busy").await;
    let sends = (0..12).map(|i| {
        let w = &w;
        async move { w.jane_says(thread, &format!("message {i}")).await }
    });
    futures::future::join_all(sends).await;
    let after = w.thread_as_store(thread).await;
    assert_eq!(after.unread_count_store, Some(13));
    let page = w
        .store
        .get_thread_messages()
        .id(thread.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 13);
});

both_backends!(update_thread_rules, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread("lifecycle").await;
    // Seed 002: the customer archives, mutes, pins.
    let updated = w
        .public
        .update_thread()
        .x_auth_token(w.jane.token.as_str())
        .id(thread.to_string())
        .body_map(|b| b.archived(Some(true)).muted(Some(true)).pinned(Some(true)))
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread;
    assert_eq!(
        (updated.is_archived, updated.is_muted, updated.is_pinned),
        (Some(true), Some(true), Some(true))
    );
    assert!(updated.updated_at >= updated.created_at);
    // status or priority from a customer is 403 and changes nothing.
    let before = w.thread_as_store(thread).await;
    let forbidden = problem(
        w.public
            .update_thread()
            .x_auth_token(w.jane.token.as_str())
            .id(thread.to_string())
            .body_map(|b| b.status(Some(ThreadStatus::Closed)).muted(Some(false)))
            .send()
            .await,
    );
    assert_eq!(
        (forbidden.status, forbidden.code.as_str()),
        (403, "store_only_field")
    );
    assert_eq!(w.thread_as_store(thread).await, before);
    // The store sets everything (seed 002's full body).
    let body: types::UpdateThreadRequest =
        serde_json::from_value(json!({"status": "resolved", "priority": "normal", "archived": false, "pinned": false, "muted": false})).unwrap();
    let updated = w
        .store
        .update_thread()
        .id(thread.to_string())
        .body(body)
        .send()
        .await
        .unwrap()
        .into_inner()
        .thread;
    assert_eq!(
        (updated.status, updated.priority, updated.is_archived),
        (
            Some(ThreadStatus::Resolved),
            Some(ThreadPriority::Normal),
            Some(false)
        )
    );
    // An empty body is 400; unknown enum values and wrong types are 400.
    let empty = problem(
        w.store
            .update_thread()
            .id(thread.to_string())
            .body(types::UpdateThreadRequest::default())
            .send()
            .await,
    );
    assert_eq!((empty.status, empty.code.as_str()), (400, "empty_update"));
    // `null` is not a value of any member (no schema is nullable), not "absent".
    for body in [
        json!({"status": "archived"}),
        json!({"pinned": "yes"}),
        json!([1, 2]),
        json!({"status": null}),
        json!({"name": null, "pinned": true}),
    ] {
        let response = w
            .raw(
                reqwest::Method::PATCH,
                &format!("/v1/messaging/threads/{thread}"),
                &w.secret_key,
                None,
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem_of(response).await;
        assert_eq!(status, 400, "{body}: {problem}");
    }
    let malformed = w
        .raw(
            reqwest::Method::PATCH,
            &format!("/v1/messaging/threads/{thread}"),
            &w.secret_key,
            None,
        )
        .header("content-type", "application/json")
        .body("{\"status\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(problem_of(malformed).await.0, 400);
    assert_eq!(
        w.thread_as_store(thread).await.status,
        Some(ThreadStatus::Resolved)
    );
});

both_backends!(thread_gates_and_store_scoping, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread("private").await;
    // gateByThreadId: Bob may not read, write, or mark Jane's thread.
    let bob = w.bob.token.as_str();
    assert_eq!(
        problem(
            w.public
                .get_thread()
                .x_auth_token(bob)
                .id(thread.to_string())
                .send()
                .await
        )
        .status,
        403
    );
    assert_eq!(
        problem(
            w.public
                .get_thread_messages()
                .x_auth_token(bob)
                .id(thread.to_string())
                .send()
                .await
        )
        .status,
        403
    );
    assert_eq!(
        problem(
            w.public
                .mark_thread_read()
                .x_auth_token(bob)
                .id(thread.to_string())
                .send()
                .await
        )
        .status,
        403
    );
    assert_eq!(
        problem(
            w.public
                .send_message()
                .x_auth_token(bob)
                .id(thread.to_string())
                .body_map(|b| b.message("hi"))
                .send()
                .await
        )
        .status,
        403
    );
    assert_eq!(
        problem(
            w.public
                .update_thread()
                .x_auth_token(bob)
                .id(thread.to_string())
                .body_map(|b| b.muted(Some(true)))
                .send()
                .await
        )
        .status,
        403
    );
    // Another store, or the other mode, sees nothing: 404, never 403.
    let other = w.app.create_store("Other").await;
    let other_store = w.app.client(&other.secret_key_test);
    let hidden = problem(other_store.get_thread().id(thread.to_string()).send().await);
    assert_eq!(
        (hidden.status, hidden.code.as_str()),
        (404, "thread_not_found")
    );
    let live = w.app.client(&w.live_secret_key);
    assert_eq!(
        problem(live.get_thread().id(thread.to_string()).send().await).status,
        404
    );
    assert_eq!(
        problem(
            live.send_message()
                .id(thread.to_string())
                .body_map(|b| b.message("hi"))
                .send()
                .await
        )
        .status,
        404
    );
    assert!(live.list_threads().send().await.unwrap().threads.is_empty());
    // A page of messages checks the gates in its own query: refused, it is still 404 or 403,
    // never an empty page.
    let hidden_page = problem(
        other_store
            .get_thread_messages()
            .id(thread.to_string())
            .send()
            .await,
    );
    assert_eq!(
        (hidden_page.status, hidden_page.code.as_str()),
        (404, "thread_not_found")
    );
    assert_eq!(
        problem(
            live.get_thread_messages()
                .id(thread.to_string())
                .send()
                .await
        )
        .status,
        404
    );
    let jane = w.jane.token.as_str();
    let own = w
        .public
        .get_thread_messages()
        .x_auth_token(jane)
        .id(thread.to_string())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.messages.len(), 1);
    // With its only message deleted, Jane's thread is an empty page, and Bob's answer is the
    // same 403 as before.
    w.public
        .delete_message()
        .x_auth_token(jane)
        .id(own.messages[0].id)
        .send()
        .await
        .unwrap();
    let empty = w
        .public
        .get_thread_messages()
        .x_auth_token(jane)
        .id(thread.to_string())
        .send()
        .await
        .unwrap()
        .into_inner();
    assert!(empty.messages.is_empty() && !empty.pagination.has_more);
    let refused = problem(
        w.public
            .get_thread_messages()
            .x_auth_token(bob)
            .id(thread.to_string())
            .send()
            .await,
    );
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (403, "thread_not_owned")
    );
    // A publishable key without a customer token is 401 on messaging.
    let anonymous = problem(w.public.list_threads().send().await);
    assert_eq!(
        (anonymous.status, anonymous.code.as_str()),
        (401, "customer_token_required")
    );
    // Path ids that are not UUIDs are 400.
    let response = w
        .raw(
            reqwest::Method::POST,
            "/v1/messaging/threads/thread-uuid-123/read",
            &w.secret_key,
            None,
        )
        .send()
        .await
        .unwrap();
    let (status, body) = problem_of(response).await;
    // The spec's pattern for thread ids refuses it before the service.
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    // Missing thread: 404.
    assert_eq!(
        problem(
            w.store
                .get_thread()
                .id(Uuid::now_v7().to_string())
                .send()
                .await
        )
        .status,
        404
    );
});

both_backends!(edit_and_delete_under_gate_by_message_id, |app| async move {
    let w = world(app).await;
    let thread = w.jane_thread("edits").await;
    let mine = w
        .jane_says(thread, "The delivery will arrive by 4 PM.")
        .await;
    let stores = w.store_reply(thread, "Noted.").await;
    let jane = w.jane.token.as_str();

    // Seed 000: the author edits; is_edited and edited_at are set.
    let edited = w
        .public
        .edit_message()
        .x_auth_token(jane)
        .id(mine.id)
        .body_map(|b| b.message_content("Correction: The delivery will arrive by 5 PM today."))
        .send()
        .await
        .unwrap()
        .into_inner()
        .message;
    assert_eq!(
        edited.message_content,
        "Correction: The delivery will arrive by 5 PM today."
    );
    assert!(edited.is_edited && edited.edited_at.is_some());
    assert!(edited.updated_at >= edited.created_at);

    // A customer may not touch store messages or another customer's; the store may not touch the
    // customer's. Nothing changes.
    let cases = [
        (
            w.public
                .edit_message()
                .x_auth_token(jane)
                .id(stores.id)
                .body_map(|b| b.message_content("x"))
                .send()
                .await
                .map(|_| ()),
            "customer edits store message",
        ),
        (
            w.public
                .edit_message()
                .x_auth_token(w.bob.token.as_str())
                .id(mine.id)
                .body_map(|b| b.message_content("x"))
                .send()
                .await
                .map(|_| ()),
            "another customer edits",
        ),
        (
            w.store
                .edit_message()
                .id(mine.id)
                .body_map(|b| b.message_content("x"))
                .send()
                .await
                .map(|_| ()),
            "store edits customer message",
        ),
        (
            w.public
                .delete_message()
                .x_auth_token(jane)
                .id(stores.id)
                .send()
                .await
                .map(|_| ()),
            "customer deletes store message",
        ),
        (
            w.store
                .delete_message()
                .id(mine.id)
                .send()
                .await
                .map(|_| ()),
            "store deletes customer message",
        ),
    ];
    for (result, case) in cases {
        match result {
            Err(Error::ErrorResponse(p)) => assert_eq!(p.status, 403, "{case}"),
            other => panic!("{case}: {other:?}"),
        }
    }
    // The store edits its own message.
    let fixed = w
        .store
        .edit_message()
        .id(stores.id)
        .body_map(|b| b.message_content("Noted, thank you."))
        .send()
        .await
        .unwrap();
    assert!(fixed.message.is_edited);

    // Seed 003: soft delete answers {success, message_id, deleted_at}; the row stays; lists hide it.
    let deleted = w
        .public
        .delete_message()
        .x_auth_token(jane)
        .id(mine.id)
        .send()
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.success);
    assert_eq!(deleted.message_id, mine.id);
    let row = message::Entity::find_by_id(mine.id)
        .one(w.app.service.database())
        .await
        .unwrap()
        .expect("row kept for audit");
    assert!(row.is_deleted && row.deleted_at.is_some());
    let page = w
        .public
        .get_thread_messages()
        .x_auth_token(jane)
        .id(thread.to_string())
        .send()
        .await
        .unwrap();
    assert!(page.messages.iter().all(|m| m.id != mine.id));
    // A second delete, or an edit of a deleted message, is 404.
    let again = problem(
        w.public
            .delete_message()
            .x_auth_token(jane)
            .id(mine.id)
            .send()
            .await,
    );
    assert_eq!(
        (again.status, again.code.as_str()),
        (404, "message_not_found")
    );
    assert_eq!(
        problem(
            w.public
                .edit_message()
                .x_auth_token(jane)
                .id(mine.id)
                .body_map(|b| b.message_content("x"))
                .send()
                .await
        )
        .status,
        404
    );
    // Another store cannot even see the message.
    let other = w.app.create_store("Other").await;
    assert_eq!(
        problem(
            w.app
                .client(&other.secret_key_test)
                .delete_message()
                .id(stores.id)
                .send()
                .await
        )
        .status,
        404
    );
});

both_backends!(
    bad_input_is_a_clear_problem_and_changes_nothing,
    |app| async move {
        let w = world(app).await;
        let thread = w.jane_thread("inputs").await;
        let before = w.thread_as_store(thread).await;
        let path = format!("/v1/messaging/threads/{thread}/messages");
        let cases = [
            (json!({"message": ""}), 400),
            (json!({"message": "x".repeat(10_001)}), 400),
            (json!({"message": 42}), 400),
            (json!({}), 400),
        ];
        for (body, status) in cases {
            let response = w
                .raw(reqwest::Method::POST, &path, &w.secret_key, None)
                .json(&body)
                .send()
                .await
                .unwrap();
            let (got, problem) = problem_of(response).await;
            assert_eq!(got, status, "{problem}");
            assert!(
                problem["code"].is_string() && problem["request_id"].is_string(),
                "{problem}"
            );
        }
        let too_large = w
            .raw(reqwest::Method::POST, &path, &w.secret_key, None)
            .json(&json!({"message": "x".repeat(70_000)}))
            .send()
            .await
            .unwrap();
        assert_eq!(problem_of(too_large).await.0, 413);
        for query in [
            "limit=0",
            "limit=201",
            "limit=ten",
            "status=open",
            "priority=meh",
            "archived=maybe",
            "customer_id=cust_123",
        ] {
            let response = w
                .raw(
                    reqwest::Method::GET,
                    &format!("/v1/messaging/threads?{query}"),
                    &w.secret_key,
                    None,
                )
                .send()
                .await
                .unwrap();
            assert_eq!(problem_of(response).await.0, 400, "{query}");
        }
        assert_eq!(w.thread_as_store(thread).await, before);
        let page = w
            .store
            .get_thread_messages()
            .id(thread.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1);
        let _ = &w.publishable_key;
    }
);

/// A file database has a pool of connections, so writers really race (the in-memory database of
/// the other tests has one connection). Every send must succeed and every count must hold:
/// write transactions take SQLite's write lock up front instead of failing with SQLITE_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_a_sqlite_file_all_succeed() {
    let dir = std::env::temp_dir().join(format!("messaging-writers-{}", Uuid::now_v7().simple()));
    let url = format!("sqlite://{}/messaging.db", dir.display());
    let service = messaging_service::MessagingService::connect(
        &url,
        messaging_service::ServiceConfig::default(),
    )
    .await
    .expect("file database");
    let (address, server) = messaging_server::spawn(
        service.clone(),
        &messaging_server::HttpSettings::without_rate_limits(),
    )
    .await
    .expect("server");
    let keys = service.create_store("Acme").await.unwrap();
    let base = format!("http://{address}");
    let store = messaging_client::with_api_key(&base, &keys.secret_key_test).unwrap();
    let jane = register_customer(&store, "jane@example.com", "Jane Doe").await;
    let threads: Vec<Uuid> = futures::future::join_all((0..4).map(|i| {
        let store = &store;
        let jane = jane.id;
        async move {
            let body: types::CreateConversationRequest = serde_json::from_value(
                json!({"customer_id": jane, "subject": format!("t{i}"), "message": "hi"}),
            )
            .unwrap();
            store
                .create_conversation()
                .body(body)
                .send()
                .await
                .expect("create")
                .into_inner()
                .thread
                .id
        }
    }))
    .await;
    let public = messaging_client::with_api_key(&base, &keys.publishable_key_test).unwrap();
    let sends = (0..80).map(|i| {
        let (store, public, token) = (&store, &public, jane.token.as_str());
        let thread = threads[(i / 2) % threads.len()].to_string();
        async move {
            let result = if i % 2 == 0 {
                public
                    .send_message()
                    .x_auth_token(token)
                    .id(thread)
                    .body_map(|b| b.message("from jane"))
                    .send()
                    .await
            } else {
                store
                    .send_message()
                    .id(thread)
                    .body_map(|b| b.message("from the store"))
                    .send()
                    .await
            };
            result
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
    });
    let results = futures::future::join_all(sends).await;
    assert!(results.iter().all(|r| r == &Ok(201)), "{results:?}");
    for thread in &threads {
        let t = store
            .get_thread()
            .id(thread.to_string())
            .send()
            .await
            .unwrap();
        // The first message (from the store) plus 10 store and 10 customer messages.
        assert_eq!(
            (t.unread_count_customer, t.unread_count_store),
            (Some(11), Some(10))
        );
    }
    server.abort();
    let _ = std::fs::remove_dir_all(dir);
}

// A process keeps what a send takes from a thread (its status, its channel) for the threads it
// sent into, and a later send does not read the thread again: the kept state is checked in the
// statement that writes (`known_threads`; on PostgreSQL after the thread's lock). Each change
// here is made behind the server's back, as another process would: without that check every
// send below would be written as if nothing had changed.
both_backends!(
    sends_see_what_changed_in_their_thread_since_the_last_send,
    |app| async move {
        use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
        let w = world(app).await;
        let db = w.app.service.database();
        let thread_id = w.jane_thread("Known thread").await;
        let path = format!("/v1/messaging/threads/{thread_id}/messages");
        let set = |column: thread::Column, value: sea_orm::Value| async move {
            thread::Entity::update_many()
                .col_expr(column, Expr::value(value))
                .filter(thread::Column::Id.eq(thread_id))
                .exec(db)
                .await
                .unwrap();
        };
        let channel_of = |id: Uuid| async move {
            message::Entity::find_by_id(id)
                .one(db)
                .await
                .unwrap()
                .unwrap()
                .channel_id
        };
        w.store_reply(thread_id, "Looking into it.").await;
        w.store_reply(thread_id, "Found it.").await;

        // Closed elsewhere: refused, and nothing written.
        set(thread::Column::Status, "closed".into()).await;
        let refused = w
            .raw(reqwest::Method::POST, &path, &w.secret_key, None)
            .json(&json!({"message": "Still there?"}))
            .send()
            .await
            .unwrap();
        let (status, problem) = problem_of(refused).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (409, Some("thread_closed"))
        );
        set(thread::Column::Status, "active".into()).await;
        let sent = w.store_reply(thread_id, "Back again.").await;
        assert_eq!(
            w.thread_as_store(thread_id).await.status,
            Some(ThreadStatus::Active)
        );

        // Resolved elsewhere: the customer's next message reopens it.
        set(thread::Column::Status, "resolved".into()).await;
        w.jane_says(thread_id, "One more thing.").await;
        assert_eq!(
            w.thread_as_store(thread_id).await.status,
            Some(ThreadStatus::Active)
        );

        // Moved to another channel elsewhere: the next message follows the thread.
        let before = channel_of(sent.id).await;
        let moved = Uuid::now_v7();
        assert!(before.is_some() && before != Some(moved));
        set(thread::Column::ChannelId, moved.into()).await;
        let sent = w.store_reply(thread_id, "In the new channel.").await;
        assert_eq!(channel_of(sent.id).await, Some(moved));
        let sent = w.store_reply(thread_id, "Still there.").await;
        assert_eq!(channel_of(sent.id).await, Some(moved));

        // A staff member who sent, then was removed elsewhere, may not send.
        let staff = |text: &'static str| {
            w.raw(reqwest::Method::POST, &path, &w.secret_key, None)
                .header("x-acting-user", "staff-7")
                .json(&json!({ "message": text }))
                .send()
        };
        w.store
            .add_subscriber()
            .id(thread_id.to_string())
            .body(
                serde_json::from_value::<types::AddSubscriberRequest>(
                    json!({"type": "user", "id": "staff-7", "name": "Sam"}),
                )
                .unwrap(),
            )
            .send()
            .await
            .expect("staff joins");
        assert_eq!(staff("Hi, Sam here.").await.unwrap().status(), 201);
        assert_eq!(staff("Packing it.").await.unwrap().status(), 201);
        messaging_service::entity::thread_subscriber::Entity::update_many()
            .col_expr(
                messaging_service::entity::thread_subscriber::Column::IsArchived,
                Expr::value(true),
            )
            .filter(
                messaging_service::entity::thread_subscriber::Column::SubscriberId.eq("staff-7"),
            )
            .exec(db)
            .await
            .unwrap();
        let (status, problem) = problem_of(staff("Sam again.").await.unwrap()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("not_a_subscriber"))
        );

        let texts = w.texts(thread_id).await;
        assert!(
            !texts
                .iter()
                .any(|t| t == "Still there?" || t == "Sam again."),
            "{texts:?}"
        );
        assert_eq!(texts.len(), 9, "{texts:?}");
    }
);

/// On PostgreSQL the sends one process makes into one thread at the same time commit together
/// (`thread_batches`): one transaction, one lock and one flush for all that queued while the
/// one before ran. Here the first send is held at the thread's row (another connection locks
/// it) and the others queue behind it.
#[tokio::test]
async fn concurrent_sends_into_one_thread_commit_together_on_postgres() {
    use std::time::{Duration, Instant};

    use sea_orm::sqlx::{self, Row};

    const SENDS: usize = 8;
    let Some(app) = messaging_tests::spawn_app_on(messaging_tests::Backend::Postgres).await else {
        return;
    };
    let w = world(app).await;
    let thread_id = w.jane_thread("Busy chat").await;
    // Known to the process from here: the next sends read nothing before their commit.
    w.store_reply(thread_id, "Hello Jane.").await;
    let pool = sqlx::PgPool::connect(w.app.database_url()).await.unwrap();
    let hold_thread = || async {
        let mut blocker = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM threads WHERE id = $1 FOR UPDATE")
            .bind(thread_id)
            .execute(&mut *blocker)
            .await
            .unwrap();
        blocker
    };
    let hold = Duration::from_millis(500);
    // Lets go of the thread once the sends have queued behind it.
    let release_after = move |blocker: sqlx::Transaction<'static, sqlx::Postgres>| async move {
        tokio::time::sleep(hold).await;
        blocker.commit().await.unwrap();
    };

    // Eight sends at once while the thread is held.
    let since = Utc::now();
    let blocker = hold_thread().await;
    let started = Instant::now();
    let w = &w;
    let sends = futures::future::join_all((0..SENDS).map(|n| async move {
        let sent = w
            .store
            .send_message()
            .id(thread_id.to_string())
            .body_map(|b| b.message(format!("Update {n}")))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        (sent, started.elapsed())
    }));
    let release = release_after(blocker);
    let (sent, ()) = tokio::join!(sends, release);
    assert!(sent.iter().all(|(s, _)| s == &Ok(201)), "{sent:?}");
    assert!(
        sent.iter().all(|(_, took)| *took >= hold),
        "the sends were not held: {sent:?}"
    );
    let transactions: i64 = sqlx::query(
        "SELECT count(DISTINCT xid) FROM events \
         WHERE thread_id = $1 AND event_type = 'message.created' AND created_at >= $2",
    )
    .bind(thread_id)
    .bind(since)
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    // The first alone, then the seven that queued behind it together.
    assert_eq!(
        transactions, 2,
        "{SENDS} sends committed in {transactions} transactions"
    );

    // A batch with a send that may no longer be made: it alone is refused, the others are
    // written. Sam sent before, so the process knows the thread for Sam too; then Sam is
    // removed behind its back.
    let path = format!("/v1/messaging/threads/{thread_id}/messages");
    let send = |staff: bool, text: String| {
        let mut request = w.raw(reqwest::Method::POST, &path, &w.secret_key, None);
        if staff {
            request = request.header("x-acting-user", "staff-7");
        }
        async move {
            request
                .json(&json!({ "message": text }))
                .send()
                .await
                .unwrap()
        }
    };
    w.store
        .add_subscriber()
        .id(thread_id.to_string())
        .body(
            serde_json::from_value::<types::AddSubscriberRequest>(
                json!({"type": "user", "id": "staff-7", "name": "Sam"}),
            )
            .unwrap(),
        )
        .send()
        .await
        .expect("staff joins");
    assert_eq!(send(true, "Sam here.".into()).await.status(), 201);
    assert_eq!(send(true, "Sam again.".into()).await.status(), 201);
    sqlx::query("UPDATE thread_subscribers SET is_archived = true WHERE subscriber_id = 'staff-7'")
        .execute(&pool)
        .await
        .unwrap();
    let blocker = hold_thread().await;
    let first = send(false, "First in line.".into());
    let queued = async {
        // Behind the first, which waits for the thread: these queue as one batch.
        tokio::time::sleep(hold / 4).await;
        let stores = futures::future::join_all((0..4).map(|n| send(false, format!("Store {n}"))));
        tokio::join!(stores, send(true, "Sam, removed.".into()))
    };
    let release = release_after(blocker);
    let (first, (stores, sam), ()) = tokio::join!(first, queued, release);
    assert_eq!(first.status(), 201);
    let statuses: Vec<u16> = stores.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses,
        vec![201; 4],
        "one send's refusal failed the others"
    );
    let (status, problem) = problem_of(sam).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("not_a_subscriber"))
    );
    let texts = w.texts(thread_id).await;
    assert!(!texts.iter().any(|t| t == "Sam, removed."), "{texts:?}");
    // The conversation's first message, the reply, eight updates, Sam's two, then five.
    assert_eq!(texts.len(), 17, "{texts:?}");

    // A transaction takes at most 64 sends: a hundred queued behind a held thread commit in
    // more than one, the largest holding 64. (Sam's refused send made the process forget the
    // thread; one send makes it known again, so the burst is queued.)
    const MANY: usize = 100;
    assert_eq!(send(false, "Known again.".into()).await.status(), 201);
    let since = Utc::now();
    let blocker = hold_thread().await;
    let sends = futures::future::join_all((0..MANY).map(|n| send(false, format!("Burst {n}"))));
    let release = release_after(blocker);
    let (sent, ()) = tokio::join!(sends, release);
    let statuses: Vec<u16> = sent.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, vec![201; MANY]);
    let sizes: Vec<i64> = sqlx::query(
        "SELECT count(*) FROM events \
         WHERE thread_id = $1 AND event_type = 'message.created' AND created_at >= $2 \
         GROUP BY xid ORDER BY count(*) DESC",
    )
    .bind(thread_id)
    .bind(since)
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert_eq!(sizes.iter().sum::<i64>(), MANY as i64, "{sizes:?}");
    assert_eq!(sizes.first(), Some(&64), "sends per transaction: {sizes:?}");
}
