//! `MessagingApi` for `MessagingService`: each operation resolves the caller, runs the rule, and
//! turns the outcome into the operation's response enum. No rule lives here.

use messaging_api::*;
use poem_openapi::payload::Json;

use crate::{MessagingService, error::ServiceError, threads::ThreadQuery};

/// The success variant for `Ok`, the declared problem variant for `Err`.
fn respond<T, R: From<Problem>>(result: Result<T, ServiceError>, ok: impl FnOnce(T) -> R) -> R {
    match result {
        Ok(value) => ok(value),
        Err(err) => R::from(err.into_problem()),
    }
}

impl MessagingApi for MessagingService {
    async fn list_threads(
        &self,
        api_key: String,
        params: ListThreadsParams,
    ) -> ListThreadsResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            let query = ThreadQuery {
                customer_id: params.customer_id,
                status: params.status,
                priority: params.priority,
                thread_type: params.thread_type,
                archived: params.archived,
                unread: params.unread,
                limit: params.limit.clamp(1, 200) as u64,
                cursor: params.cursor,
                fields: params.fields,
            };
            self.list_threads(&caller, query).await
        };
        respond(result.await, |list| ListThreadsResponse::Ok(Json(list)))
    }

    async fn create_conversation(
        &self,
        api_key: String,
        params: CreateConversationParams,
        body: CreateConversationRequest,
    ) -> CreateConversationResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.create_conversation(&caller, body).await
        };
        respond(result.await, |c| {
            CreateConversationResponse::Created(Json(c))
        })
    }

    async fn get_thread(&self, api_key: String, params: GetThreadParams) -> GetThreadResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.get_thread(&caller, params.id, params.fields.as_deref())
                .await
        };
        respond(result.await, |t| GetThreadResponse::Ok(Json(t)))
    }

    async fn update_thread(
        &self,
        api_key: String,
        params: UpdateThreadParams,
        body: UpdateThreadRequest,
    ) -> UpdateThreadResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.update_thread(&caller, params.id, body).await
        };
        respond(result.await, |thread| {
            UpdateThreadResponse::Ok(Json(ThreadEnvelope { thread }))
        })
    }

    async fn mark_thread_read(
        &self,
        api_key: String,
        params: MarkThreadReadParams,
    ) -> MarkThreadReadResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.mark_thread_read(&caller, params.id).await
        };
        respond(result.await, |thread| {
            MarkThreadReadResponse::Ok(Json(ThreadEnvelope { thread }))
        })
    }

    async fn get_thread_messages(
        &self,
        api_key: String,
        params: GetThreadMessagesParams,
    ) -> GetThreadMessagesResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            let order = params.order.unwrap_or(SortOrder::Asc);
            let limit = params.limit.clamp(1, 200) as u64;
            self.thread_messages(&caller, params.id, order, limit, params.cursor.as_deref())
                .await
        };
        respond(result.await, |list| {
            GetThreadMessagesResponse::Ok(Json(list))
        })
    }

    async fn send_message(
        &self,
        api_key: String,
        params: SendMessageParams,
        body: SendMessageRequest,
    ) -> SendMessageResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.send_message(&caller, params.id, body.message).await
        };
        respond(result.await, |message| {
            SendMessageResponse::Created(Json(MessageEnvelope { message }))
        })
    }

    async fn edit_message(
        &self,
        api_key: String,
        params: EditMessageParams,
        body: EditMessageRequest,
    ) -> EditMessageResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.edit_message(&caller, params.id, body.message_content)
                .await
        };
        respond(result.await, |message| {
            EditMessageResponse::Ok(Json(MessageEnvelope { message }))
        })
    }

    async fn delete_message(
        &self,
        api_key: String,
        params: DeleteMessageParams,
    ) -> DeleteMessageResponse {
        let result = async {
            let caller = self
                .messaging_caller(&api_key, params.x_auth_token.as_deref())
                .await?;
            self.delete_message(&caller, params.id).await
        };
        respond(result.await, |d| DeleteMessageResponse::Ok(Json(d)))
    }

    async fn register(&self, api_key: String, body: RegisterRequest) -> RegisterResponse {
        respond(self.register(&api_key, body).await, |s| {
            RegisterResponse::Created(Json(s))
        })
    }

    async fn login(&self, api_key: String, body: LoginRequest) -> LoginResponse {
        respond(self.login(&api_key, body).await, |s| {
            LoginResponse::Ok(Json(s))
        })
    }

    async fn request_otp(&self, api_key: String, body: OtpRequest) -> RequestOtpResponse {
        respond(self.request_otp(&api_key, body).await, |a| {
            RequestOtpResponse::Accepted(Json(a))
        })
    }

    async fn verify_otp(&self, api_key: String, body: VerifyOtpRequest) -> VerifyOtpResponse {
        respond(self.verify_otp(&api_key, body).await, |s| {
            VerifyOtpResponse::Ok(Json(s))
        })
    }

    async fn refresh_session(
        &self,
        api_key: String,
        body: RefreshRequest,
    ) -> RefreshSessionResponse {
        respond(self.refresh_session(&api_key, body).await, |s| {
            RefreshSessionResponse::Ok(Json(s))
        })
    }
}
