//! Safe retries (`Idempotency-Key`): the storage side. One row per caller and key records the
//! request's fingerprint, a claim while it runs, and then its first final answer for 24 hours.
//!
//! The server's middleware is the one entry point: it resolves the caller's [`Scope`], calls
//! [`MessagingService::begin_idempotent`], and either replays a stored answer or runs the
//! operation inside [`Claim::run`] and hands the answer to [`Claim::finish`]. Rules take part
//! through one function only, [`MessagingService::commit`]: inside a claim it does not commit
//! but parks the rule's write transaction with the claim, and `finish` writes the answer into
//! that same transaction and commits both together. A crash therefore never leaves a write
//! without its record, or a record without its write. Answers that wrote nothing (4xx) are
//! stored after the operation; a 5xx rolls back and releases the key, so its retry runs again.
//! Stored bodies are sealed (ChaCha20-Poly1305, with a key derived from the server secret and
//! bound to their row): an answer may carry a secret, such as a new webhook endpoint's.
//!
//! Concurrent retries meet at the unique index on (store, mode, principal, key): exactly one
//! request inserts the claim, on every replica of one database. A claim whose request died
//! (process killed) expires after [`LEASE`]; a retry then takes it over, and the old request,
//! should it still be running, can no longer finish (its lock token no longer matches), so
//! its write is rolled back.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect,
    sea_query::Expr,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    MessagingService,
    auth::Mode,
    entity::idempotency_key::{self, Column},
    error::ServiceError,
    now,
    subscribers::Participant,
};

/// How long a key and its first answer are kept.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a running request holds its key before a retry may assume it died.
pub const LEASE: Duration = Duration::from_secs(30);

/// Keys are 1 to this many printable ASCII characters.
pub const MAX_KEY_LEN: usize = 255;

/// How many expired keys one prune statement deletes.
const PRUNE_BATCH: u64 = 1_000;

/// Whether `key` is a valid `Idempotency-Key`: 1 to 255 printable ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// The request a key protects: SHA-256 over the method, the path with its query, and the body.
/// The same key with another fingerprint is a different request (422).
pub fn fingerprint(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path_and_query.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Whose keys these are: a store and mode, and the customer, staff member or store acting.
/// Another caller's identical key is a different key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    store_id: Uuid,
    mode: Mode,
    principal: String,
}

/// A stored answer, replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// The key is new (or its claim expired): run the request within this claim.
    Run(Claim),
    /// The first request finished: answer this again.
    Replay(Answer),
    /// The key was used with a different request (422 `idempotency_key_reused`).
    Reused,
    /// The first request is still running (409 `idempotency_key_in_use`).
    InUse,
}

/// Why a claimed request's answer could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// The claim expired and a retry took it over: this request's write was rolled back.
    #[error("the idempotency key was taken over by a retry after its lease expired")]
    Lost,
    /// Storing the answer (or committing the write with it) failed: nothing was written.
    #[error("could not store the idempotent answer")]
    Database(#[source] DbErr),
}

/// The write transaction a rule commits: whatever `begin_write` returns. It must be a
/// `ConnectionTrait` with `commit(self)`, and roll back when dropped.
pub(crate) type WriteTransaction = crate::events::WriteTxn;

/// Where the rule running inside a claim parks its write transaction for [`Claim::finish`].
#[derive(Default)]
struct WriteSlot(Mutex<Option<WriteTransaction>>);

impl WriteSlot {
    fn take(&self) -> Option<WriteTransaction> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

tokio::task_local! {
    /// The claim of the request this task serves, set by [`Claim::run`].
    static CURRENT_WRITE: Arc<WriteSlot>;
}

/// A claimed key: the request runs inside [`Claim::run`], then [`Claim::finish`] stores its
/// answer. Dropped unfinished (a panic, a client that went away), it rolls back a parked write
/// and releases the key in the background, so a retry runs again at once.
pub struct Claim {
    service: MessagingService,
    id: Uuid,
    token: Uuid,
    slot: Arc<WriteSlot>,
    finished: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// Runs the request: a write transaction committed through [`MessagingService::commit`]
    /// inside `request` waits for [`Claim::finish`].
    pub async fn run<F: Future>(&self, request: F) -> F::Output {
        CURRENT_WRITE.scope(Arc::clone(&self.slot), request).await
    }

    /// Gives the key up without an answer: the request was refused before it ran (it wrote
    /// nothing), so its retry may run, with this request or another.
    pub async fn abandon(mut self) {
        drop(self.slot.take());
        self.finished = true;
        release(&self.service, self.id, self.token).await;
    }

    /// Stores the request's final answer. With a parked write, in its transaction, then commits
    /// both; without one (the request wrote nothing), on its own. A 5xx answer is not kept: the
    /// parked write is rolled back and the key released.
    pub async fn finish(mut self, answer: &Answer) -> Result<(), FinishError> {
        let parked = self.slot.take();
        if answer.status >= 500 {
            // Dropping a transaction rolls it back.
            drop(parked);
            self.finished = true;
            release(&self.service, self.id, self.token).await;
            return Ok(());
        }
        let sealed = self
            .service
            .inner
            .keys
            .seal_answer(self.id.as_bytes(), &answer.body);
        let stored = match parked {
            Some(txn) => {
                let stored = store_answer(&txn, self.id, self.token, answer, &sealed)
                    .await
                    .map_err(FinishError::Database)?;
                if !stored {
                    drop(txn);
                    self.finished = true;
                    return Err(FinishError::Lost);
                }
                txn.commit().await.map_err(FinishError::Database)?;
                true
            }
            None => store_answer(self.service.writer(), self.id, self.token, answer, &sealed)
                .await
                .map_err(FinishError::Database)?,
        };
        if !stored {
            // Nothing was written, so the answer stands; the retry that took the key over
            // stores its own.
            tracing::warn!("an idempotency key was taken over while its request ran");
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A parked write rolls back as it drops here.
        drop(self.slot.take());
        let (service, id, token) = (self.service.clone(), self.id, self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&service, id, token).await });
        }
    }
}

/// Deletes a claim that is still ours. Failing that, the lease expires it.
async fn release(service: &MessagingService, id: Uuid, token: Uuid) {
    let released = idempotency_key::Entity::delete_many()
        .filter(Column::Id.eq(id))
        .filter(Column::LockToken.eq(token))
        .exec(service.writer())
        .await;
    if let Err(err) = released {
        tracing::error!(error = %err, "could not release an idempotency key; its lease will expire");
    }
}

/// Writes the answer into the claim, if the claim is still ours.
async fn store_answer<C: ConnectionTrait>(
    conn: &C,
    id: Uuid,
    token: Uuid,
    answer: &Answer,
    sealed_body: &[u8],
) -> Result<bool, DbErr> {
    let updated = idempotency_key::Entity::update_many()
        .col_expr(
            Column::ResponseStatus,
            Expr::value(i32::from(answer.status)),
        )
        .col_expr(
            Column::ResponseContentType,
            Expr::value(answer.content_type.clone()),
        )
        .col_expr(Column::ResponseBody, Expr::value(sealed_body.to_vec()))
        .col_expr(Column::LockToken, Expr::value(Option::<Uuid>::None))
        .col_expr(
            Column::LockedUntil,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        )
        .filter(Column::Id.eq(id))
        .filter(Column::LockToken.eq(token))
        .exec(conn)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Whether this task runs an idempotent request (inside [`Claim::run`]).
fn in_idempotent_request() -> bool {
    CURRENT_WRITE.try_with(|_| ()).is_ok()
}

/// Parks `txn` with the claim of the current request, or gives it back when there is none.
fn park(txn: WriteTransaction) -> Result<Option<WriteTransaction>, ServiceError> {
    let mut txn = Some(txn);
    let parked = CURRENT_WRITE.try_with(|slot| {
        let mut slot = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return false;
        }
        *slot = txn.take();
        true
    });
    match parked {
        Err(_) => Ok(txn),
        Ok(true) => Ok(None),
        // A rule committed twice within one request: its writes could not be one answer.
        Ok(false) => Err(ServiceError::internal(std::io::Error::other(
            "two write transactions in one idempotent request",
        ))),
    }
}

impl MessagingService {
    /// The one way a rule commits its write transaction. Outside an idempotent request it
    /// commits. Inside one it parks the transaction with the request's claim, which commits it
    /// together with the request's answer: so this must be the rule's last use of the
    /// database, with the answer built from what the transaction wrote and read.
    pub(crate) async fn commit(&self, txn: WriteTransaction) -> Result<(), ServiceError> {
        if in_idempotent_request() {
            // What the rule assumed must be checked while it runs: it may run again.
            txn.run_checks().await?;
        }
        match park(txn)? {
            Some(txn) => Ok(txn.commit().await?),
            None => Ok(()),
        }
    }

    /// The scope of a request's keys: the caller as the operation will resolve it. `None` when
    /// the credentials do not resolve; the operation then refuses the request itself (401, 403,
    /// 400), which writes nothing.
    pub async fn idempotency_scope(
        &self,
        api_key: &str,
        token: Option<&str>,
        acting_user: Option<&str>,
    ) -> Option<Scope> {
        let caller = self.messaging_caller(api_key, token).await.ok()?;
        let principal = match Participant::of(&caller, acting_user).ok()? {
            Participant::Customer(id) => format!("customer:{id}"),
            Participant::Organization(_) => "store".to_owned(),
            Participant::User(id) => format!("user:{id}"),
        };
        Some(Scope {
            store_id: caller.store_id,
            mode: caller.mode,
            principal,
        })
    }

    /// Claims `key` for a request with `fingerprint`, or says why not.
    pub async fn begin_idempotent(
        &self,
        scope: &Scope,
        key: &str,
        fingerprint: &str,
    ) -> Result<Begin, ServiceError> {
        let at = now();
        let token = Uuid::new_v4();
        let lease_end = at + LEASE;
        let expires_at = at + RETENTION;
        let claim = idempotency_key::ActiveModel {
            id: Set(Uuid::now_v7()),
            store_id: Set(scope.store_id),
            mode: Set(scope.mode.as_str().to_owned()),
            principal: Set(scope.principal.clone()),
            idempotency_key: Set(key.to_owned()),
            fingerprint: Set(fingerprint.to_owned()),
            lock_token: Set(Some(token)),
            locked_until: Set(Some(lease_end)),
            response_status: Set(None),
            response_content_type: Set(None),
            response_body: Set(None),
            created_at: Set(at),
            expires_at: Set(expires_at),
        };
        let id = claim.id.clone().unwrap();
        let inserted = idempotency_key::Entity::insert(claim)
            .on_conflict_do_nothing_on([
                Column::StoreId,
                Column::Mode,
                Column::Principal,
                Column::IdempotencyKey,
            ])
            .exec_without_returning(self.writer())
            .await?;
        if matches!(inserted, sea_orm::TryInsertResult::Inserted(1)) {
            return Ok(Begin::Run(self.claim(id, token)));
        }
        let existing = idempotency_key::Entity::find()
            .filter(Column::StoreId.eq(scope.store_id))
            .filter(Column::Mode.eq(scope.mode.as_str()))
            .filter(Column::Principal.eq(scope.principal.as_str()))
            .filter(Column::IdempotencyKey.eq(key))
            .one(self.writer())
            .await?;
        let Some(existing) = existing else {
            // Released or pruned between the two statements: the retry's retry will claim it.
            return Ok(Begin::InUse);
        };
        if existing.expires_at <= at {
            // Kept past its 24 hours only until the pruner runs: a new key now.
            return self
                .take_over(
                    existing.id,
                    None,
                    fingerprint,
                    token,
                    lease_end,
                    Some(expires_at),
                )
                .await;
        }
        if existing.fingerprint != fingerprint {
            return Ok(Begin::Reused);
        }
        if let (Some(status), Some(sealed)) = (existing.response_status, existing.response_body) {
            // Sealed with another server secret (or altered): the answer is lost, and running
            // the request again could write twice. 500, which the retry may try again.
            let body = self
                .inner
                .keys
                .open_answer(existing.id.as_bytes(), &sealed)
                .ok_or_else(|| {
                    ServiceError::internal(std::io::Error::other(
                        "a stored idempotent answer does not open with this server's key",
                    ))
                })?;
            return Ok(Begin::Replay(Answer {
                status: u16::try_from(status).map_err(ServiceError::internal)?,
                content_type: existing.response_content_type,
                body,
            }));
        }
        match (existing.lock_token, existing.locked_until) {
            (Some(old), Some(until)) if until <= at => {
                self.take_over(existing.id, Some(old), fingerprint, token, lease_end, None)
                    .await
            }
            _ => Ok(Begin::InUse),
        }
    }

    /// Claims an existing row whose claim expired (`previous` is its lock token) or whose
    /// retention ended (`previous` is `None`; it starts afresh until `expires_at`). One
    /// conditional update: of several retries doing this at once, one wins.
    async fn take_over(
        &self,
        id: Uuid,
        previous: Option<Uuid>,
        fingerprint: &str,
        token: Uuid,
        lease_end: chrono::DateTime<chrono::Utc>,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Begin, ServiceError> {
        let mut update = idempotency_key::Entity::update_many()
            .col_expr(Column::LockToken, Expr::value(Some(token)))
            .col_expr(Column::LockedUntil, Expr::value(Some(lease_end)))
            .filter(Column::Id.eq(id));
        update = match (previous, expires_at) {
            (Some(previous), _) => update
                .filter(Column::LockToken.eq(previous))
                .filter(Column::LockedUntil.lte(now())),
            (None, Some(expires_at)) => update
                .col_expr(Column::Fingerprint, Expr::value(fingerprint))
                .col_expr(Column::ResponseStatus, Expr::value(Option::<i32>::None))
                .col_expr(
                    Column::ResponseContentType,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(Column::ResponseBody, Expr::value(Option::<Vec<u8>>::None))
                .col_expr(Column::CreatedAt, Expr::value(now()))
                .col_expr(Column::ExpiresAt, Expr::value(expires_at))
                .filter(Column::ExpiresAt.lte(now())),
            (None, None) => return Ok(Begin::InUse),
        };
        let updated = update.exec(self.writer()).await?.rows_affected;
        Ok(if updated == 1 {
            Begin::Run(self.claim(id, token))
        } else {
            Begin::InUse
        })
    }

    fn claim(&self, id: Uuid, token: Uuid) -> Claim {
        Claim {
            service: self.clone(),
            id,
            token,
            slot: Arc::default(),
            finished: false,
        }
    }

    /// Deletes keys past their 24 hours, in batches. Returns how many.
    pub async fn prune_idempotency_keys(&self) -> Result<u64, ServiceError> {
        let mut pruned = 0;
        loop {
            let expired: Vec<Uuid> = idempotency_key::Entity::find()
                .select_only()
                .column(Column::Id)
                .filter(Column::ExpiresAt.lte(now()))
                .limit(PRUNE_BATCH)
                .into_tuple()
                .all(self.writer())
                .await?;
            if expired.is_empty() {
                return Ok(pruned);
            }
            let batch = expired.len() as u64;
            pruned += idempotency_key::Entity::delete_many()
                .filter(Column::Id.is_in(expired))
                .filter(Column::ExpiresAt.lte(now()))
                .exec(self.writer())
                .await?
                .rows_affected;
            if batch < PRUNE_BATCH {
                return Ok(pruned);
            }
        }
    }

    /// Prunes expired keys every `interval` until the task is dropped. Any replica may run it:
    /// deleting what is expired is the same work whoever does it. Errors are logged and the
    /// next tick tries again.
    pub async fn run_idempotency_pruner(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.prune_idempotency_keys().await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "pruned expired idempotency keys"),
                Err(err) => tracing::error!(error = %err, "could not prune idempotency keys"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_255_printable_ascii_characters() {
        assert!(is_valid_key("a"));
        assert!(is_valid_key("order 8821 / send #1 ~"));
        assert!(is_valid_key(&"k".repeat(255)));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(&"k".repeat(256)));
        assert!(!is_valid_key("tab\there"));
        assert!(!is_valid_key("é"));
    }

    #[test]
    fn fingerprints_separate_method_path_and_body() {
        let send = fingerprint(
            "POST",
            "/v1/messaging/threads/x/messages",
            b"{\"message\":\"hi\"}",
        );
        assert_eq!(send.len(), 64);
        assert_eq!(
            send,
            fingerprint(
                "POST",
                "/v1/messaging/threads/x/messages",
                b"{\"message\":\"hi\"}"
            )
        );
        assert_ne!(
            send,
            fingerprint(
                "POST",
                "/v1/messaging/threads/y/messages",
                b"{\"message\":\"hi\"}"
            )
        );
        assert_ne!(
            send,
            fingerprint(
                "PATCH",
                "/v1/messaging/threads/x/messages",
                b"{\"message\":\"hi\"}"
            )
        );
        assert_ne!(
            send,
            fingerprint(
                "POST",
                "/v1/messaging/threads/x/messages",
                b"{\"message\":\"ho\"}"
            )
        );
        // The length prefix keeps the path and the body apart.
        assert_ne!(
            fingerprint("POST", "/a", b"b"),
            fingerprint("POST", "/ab", b"")
        );
    }
}
