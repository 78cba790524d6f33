//! Webhooks (brief section 9) end to end on SQLite and PostgreSQL: the endpoint operations and
//! their isolation between stores and modes, URL rules per mode.

use base64::Engine;
use messaging_client::types::{self, EventType};
use messaging_tests::{
    TestApp, both_backends,
    fixtures::{Shop, page_size, problem},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn create_body(value: Value) -> types::CreateWebhookEndpointRequest {
    serde_json::from_value(value).expect("a valid endpoint request")
}

async fn create(client: &messaging_client::Client, value: Value) -> types::CreatedWebhookEndpoint {
    client
        .create_webhook_endpoint()
        .body(create_body(value))
        .send()
        .await
        .expect("endpoint created")
        .into_inner()
}

/// A raw call, for bodies the generated client would refuse to send.
async fn raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.http().request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

both_backends!(
    endpoints_are_created_read_updated_and_deleted,
    |app| async move {
        let shop = Shop::open(app).await;
        let created = create(
            &shop.store,
            json!({
                "url": "http://127.0.0.1:9/hooks",
                "event_types": ["message.created", "thread.updated", "message.created"],
                "description": "Order system",
            }),
        )
        .await;
        // The secret: whsec_ and the base64 of 32 bytes.
        let key = created
            .secret
            .strip_prefix("whsec_")
            .expect("whsec_ prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(created.url, "http://127.0.0.1:9/hooks");
        assert_eq!(
            created.event_types,
            [EventType::MessageCreated, EventType::ThreadUpdated],
            "sorted, without repeats"
        );
        assert_eq!(created.description.as_deref(), Some("Order system"));
        assert!(created.enabled);

        // Read back: the same endpoint, and never the secret.
        let fetched = shop
            .store
            .get_webhook_endpoint()
            .id(created.id)
            .send()
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (fetched.id, fetched.created_at),
            (created.id, created.created_at)
        );
        let (status, body) = raw(
            &shop.app,
            reqwest::Method::GET,
            &format!("/v1/webhooks/endpoints/{}", created.id),
            &shop.secret_key,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.get("secret").is_none(), "{body}");
        assert!(
            !body.to_string().contains(key),
            "the secret never shows again"
        );
        let (_, listed) = raw(
            &shop.app,
            reqwest::Method::GET,
            "/v1/webhooks/endpoints",
            &shop.secret_key,
            None,
        )
        .await;
        assert!(!listed.to_string().contains(key));
        let second = create(&shop.store, json!({"url": "https://hooks.acme.example/in"})).await;
        assert!(second.event_types.is_empty(), "no filter: every type");
        assert_ne!(
            second.secret, created.secret,
            "every endpoint has its own secret"
        );
        let listed = shop
            .store
            .list_webhook_endpoints()
            .send()
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<Uuid> = listed.endpoints.iter().map(|e| e.id).collect();
        assert_eq!(ids, [created.id, second.id], "oldest first");

        // Update: the given fields change, the others stay.
        let body: types::UpdateWebhookEndpointRequest =
            serde_json::from_value(json!({"enabled": false, "description": "Paused"})).unwrap();
        let updated = shop
            .store
            .update_webhook_endpoint()
            .id(created.id)
            .body(body)
            .send()
            .await
            .unwrap()
            .into_inner();
        assert!(!updated.enabled);
        assert_eq!(updated.description.as_deref(), Some("Paused"));
        assert_eq!(updated.url, created.url);
        assert_eq!(updated.event_types, created.event_types);
        let body: types::UpdateWebhookEndpointRequest = serde_json::from_value(
        json!({"url": "http://localhost:9/v2", "event_types": ["subscriber.added"], "enabled": true}),
    )
    .unwrap();
        let updated = shop
            .store
            .update_webhook_endpoint()
            .id(created.id)
            .body(body)
            .send()
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.url, "http://localhost:9/v2");
        assert_eq!(updated.event_types, [EventType::SubscriberAdded]);
        assert!(updated.enabled);
        // An empty update and a bad URL are 400 and change nothing.
        let path = format!("/v1/webhooks/endpoints/{}", created.id);
        let (status, body) = raw(
            &shop.app,
            reqwest::Method::PATCH,
            &path,
            &shop.secret_key,
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("empty_update"))
        );
        let (status, body) = raw(
            &shop.app,
            reqwest::Method::PATCH,
            &path,
            &shop.secret_key,
            Some(json!({"url": "ftp://x.example/"})),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_webhook_url"))
        );
        // The filter back to "all" takes an explicit empty list.
        let (status, body) = raw(
            &shop.app,
            reqwest::Method::PATCH,
            &path,
            &shop.secret_key,
            Some(json!({"event_types": []})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["event_types"], json!([]));
        assert_eq!(body["url"], "http://localhost:9/v2");

        // No deliveries yet.
        let deliveries = shop
            .store
            .list_webhook_deliveries()
            .id(created.id)
            .limit(page_size(10))
            .send()
            .await
            .unwrap()
            .into_inner();
        assert!(deliveries.deliveries.is_empty());
        assert!(!deliveries.pagination.has_more);

        // Delete: 204, then 404 everywhere.
        shop.store
            .delete_webhook_endpoint()
            .id(created.id)
            .send()
            .await
            .unwrap();
        let err = problem(
            shop.store
                .get_webhook_endpoint()
                .id(created.id)
                .send()
                .await,
        );
        assert_eq!(
            (err.status, err.code.as_str()),
            (404, "webhook_endpoint_not_found")
        );
        let err = problem(
            shop.store
                .delete_webhook_endpoint()
                .id(created.id)
                .send()
                .await,
        );
        assert_eq!(err.code, "webhook_endpoint_not_found");
        let err = problem(
            shop.store
                .list_webhook_deliveries()
                .id(created.id)
                .send()
                .await,
        );
        assert_eq!(err.code, "webhook_endpoint_not_found");
        let listed = shop
            .store
            .list_webhook_endpoints()
            .send()
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.endpoints.len(), 1);
    }
);

both_backends!(
    endpoints_are_isolated_between_stores_and_modes,
    |app| async move {
        let shop = Shop::open(app).await;
        let endpoint = create(&shop.store, json!({"url": "https://hooks.acme.example/in"})).await;
        let other = shop.app.create_store("Other").await;
        let live = shop.app.client(&shop.live_secret_key);
        let foreign = shop.app.client(&other.secret_key_test);
        for (who, client) in [("the live key", &live), ("another store", &foreign)] {
            let listed = client
                .list_webhook_endpoints()
                .send()
                .await
                .unwrap()
                .into_inner();
            assert!(listed.endpoints.is_empty(), "{who} sees nothing");
            let err = problem(client.get_webhook_endpoint().id(endpoint.id).send().await);
            assert_eq!(
                (err.status, err.code.as_str()),
                (404, "webhook_endpoint_not_found"),
                "{who}"
            );
            let body: types::UpdateWebhookEndpointRequest =
                serde_json::from_value(json!({"enabled": false})).unwrap();
            let err = problem(
                client
                    .update_webhook_endpoint()
                    .id(endpoint.id)
                    .body(body)
                    .send()
                    .await,
            );
            assert_eq!(err.status, 404, "{who}");
            let err = problem(
                client
                    .delete_webhook_endpoint()
                    .id(endpoint.id)
                    .send()
                    .await,
            );
            assert_eq!(err.status, 404, "{who}");
            let err = problem(
                client
                    .list_webhook_deliveries()
                    .id(endpoint.id)
                    .send()
                    .await,
            );
            assert_eq!(err.status, 404, "{who}");
        }
        // A publishable key manages no endpoint, not even with a customer token.
        let err = problem(shop.public.list_webhook_endpoints().send().await);
        assert_eq!(
            (err.status, err.code.as_str()),
            (403, "secret_key_required")
        );
        let customer = shop
            .app
            .customer_client(&shop.publishable_key, &shop.jane.token);
        let err = problem(customer.get_webhook_endpoint().id(endpoint.id).send().await);
        assert_eq!(
            (err.status, err.code.as_str()),
            (403, "secret_key_required")
        );
        // Untouched.
        let fetched = shop
            .store
            .get_webhook_endpoint()
            .id(endpoint.id)
            .send()
            .await
            .unwrap()
            .into_inner();
        assert!(fetched.enabled);
    }
);

both_backends!(urls_follow_the_rules_of_each_mode, |app| async move {
    let shop = Shop::open(app).await;
    let post = |key: String, body: Value| {
        let app = &shop.app;
        async move {
            raw(
                app,
                reqwest::Method::POST,
                "/v1/webhooks/endpoints",
                &key,
                Some(body),
            )
            .await
        }
    };
    let live = shop.live_secret_key.clone();
    let test = shop.secret_key.clone();
    for url in [
        "http://hooks.acme.example/in",
        "https://127.0.0.1:8443/in",
        "https://[::1]/in",
        "https://10.0.0.8/in",
        "https://192.168.1.20/in",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/in",
        "not a url",
    ] {
        let (status, body) = post(live.clone(), json!({"url": url})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_webhook_url")),
            "live {url}"
        );
    }
    for url in [
        "https://10.0.0.8/in",
        "http://169.254.169.254/latest",
        "ftp://hooks.acme.example/in",
    ] {
        let (status, body) = post(test.clone(), json!({"url": url})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_webhook_url")),
            "test {url}"
        );
    }
    // Malformed bodies: an unknown event type, an oversized URL.
    let (status, _) = post(
        test.clone(),
        json!({"url": "https://hooks.acme.example/in", "event_types": ["message.exploded"]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let long = format!("https://hooks.acme.example/{}", "a".repeat(2048));
    let (status, _) = post(test.clone(), json!({"url": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing was created by any of that.
    let listed = shop
        .store
        .list_webhook_endpoints()
        .send()
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty());
    let (status, _) = post(
        live.clone(),
        json!({"url": "https://hooks.acme.example/in"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "live: https to a public name");
    for url in [
        "http://127.0.0.1:8080/in",
        "http://localhost:8080/in",
        "http://[::1]:8080/in",
    ] {
        let (status, body) = post(test.clone(), json!({"url": url})).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "test mode allows loopback {url}: {body}"
        );
    }
});

both_backends!(
    a_store_has_at_most_twenty_endpoints_per_mode,
    |app| async move {
        let shop = Shop::open(app).await;
        for i in 0..20 {
            create(
                &shop.store,
                json!({"url": format!("https://hooks.acme.example/{i}")}),
            )
            .await;
        }
        let err = problem(
            shop.store
                .create_webhook_endpoint()
                .body(create_body(json!({"url": "https://hooks.acme.example/21"})))
                .send()
                .await,
        );
        assert_eq!(
            (err.status, err.code.as_str()),
            (409, "webhook_endpoint_limit")
        );
        // The other mode has its own.
        create(
            &shop.app.client(&shop.live_secret_key),
            json!({"url": "https://hooks.acme.example/live"}),
        )
        .await;
    }
);
