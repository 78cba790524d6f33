//! Fixtures the end-to-end suites share: registered customers, typed problems, page sizes.

use messaging_client::{Client, Error, ResponseValue, types};
use serde_json::json;
use uuid::Uuid;

/// A registered customer with a session.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: Uuid,
    pub token: String,
}

/// Registers a customer through the API with the store's secret-key client.
pub async fn register_customer(store: &Client, email: &str, name: &str) -> Customer {
    let body: types::RegisterRequest = serde_json::from_value(
        json!({"email": email, "password": "correct horse battery staple", "name": name}),
    )
    .expect("a valid registration");
    let session = store
        .register()
        .body(body)
        .send()
        .await
        .expect("register")
        .into_inner();
    Customer {
        id: session.customer.id,
        token: session.session.access_token,
    }
}

/// The problem of a failed call; panics on success or on a failure that is not a problem.
pub fn problem<T: std::fmt::Debug>(
    result: Result<ResponseValue<T>, Error<types::Problem>>,
) -> types::Problem {
    match result {
        Err(Error::ErrorResponse(problem)) => problem.into_inner(),
        other => panic!("expected a problem response, got {other:?}"),
    }
}

/// A page size for the client's `limit` (1 to 200).
pub fn page_size(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).expect("page sizes are not zero")
}

/// A store ("Acme") with its keys, a client per key, and two registered customers: the world
/// most end-to-end tests start from.
pub struct Shop {
    pub app: crate::TestApp,
    pub store_id: Uuid,
    pub secret_key: String,
    pub publishable_key: String,
    pub live_secret_key: String,
    /// Acts as the store (secret key, no token).
    pub store: Client,
    /// The publishable key: customers add their token per call.
    pub public: Client,
    pub jane: Customer,
    pub bob: Customer,
}

impl Shop {
    /// A thread as the store reads it.
    pub async fn thread_as_store(&self, thread: Uuid) -> types::Thread {
        self.store
            .get_thread()
            .id(thread.to_string())
            .send()
            .await
            .expect("get thread")
            .into_inner()
    }

    pub async fn open(app: crate::TestApp) -> Self {
        let keys = app.create_store("Acme").await;
        let store = app.client(&keys.secret_key_test);
        let public = app.client(&keys.publishable_key_test);
        let jane = register_customer(&store, "jane@example.com", "Jane Doe").await;
        let bob = register_customer(&store, "bob@example.com", "Bob Roe").await;
        Self {
            store_id: keys.store_id,
            secret_key: keys.secret_key_test,
            publishable_key: keys.publishable_key_test,
            live_secret_key: keys.secret_key_live,
            app,
            store,
            public,
            jane,
            bob,
        }
    }
}
