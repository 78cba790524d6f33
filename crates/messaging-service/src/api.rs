//! `MessagingApi` for `MessagingService`: each operation resolves the caller, runs the rule, and
//! turns the outcome into the operation's response enum. No rule lives here.

use messaging_api::*;

use crate::{
    MessagingService,
    auth::Caller,
    error::ServiceError,
    subscribers::Participant,
    threads::{ThreadQuery, ThreadRef},
};

/// The success variant for `Ok`, the declared problem variant for `Err`.
fn respond<T, R: From<Problem>>(result: Result<T, ServiceError>, ok: impl FnOnce(T) -> R) -> R {
    match result {
        Ok(value) => ok(value),
        Err(err) => R::from(err.into_problem()),
    }
}

/// The caller of an operation whose parameters carry `x-auth-token` and `x-acting-user`.
macro_rules! participant {
    ($service:expr, $api_key:expr, $params:expr) => {
        $service.participant(
            &$api_key,
            $params.x_auth_token.as_deref(),
            $params.x_acting_user.as_deref(),
        )
    };
}

/// Page sizes arrive validated (1 to 200); the clamp only guards the conversion.
fn page_size(limit: i32) -> u64 {
    limit.clamp(1, 200) as u64
}

impl MessagingService {
    /// The caller and the participant it acts as, from the key, `x-auth-token` and `x-acting-user`.
    async fn participant(
        &self,
        api_key: &str,
        token: Option<&str>,
        acting_user: Option<&str>,
    ) -> Result<(Caller, Participant), ServiceError> {
        let caller = self.messaging_caller(api_key, token).await?;
        let participant = Participant::of(&caller, acting_user)?;
        Ok((caller, participant))
    }
}

impl MessagingApi for MessagingService {
    async fn list_threads(
        &self,
        api_key: String,
        params: ListThreadsParams,
    ) -> ListThreadsResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            let query = ThreadQuery {
                customer_id: params.customer_id,
                status: params.status,
                priority: params.priority,
                thread_type: params.thread_type,
                archived: params.archived,
                unread: params.unread,
                limit: page_size(params.limit),
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
            let (caller, author) = participant!(self, api_key, params).await?;
            self.create_conversation(&caller, &author, body).await
        };
        respond(result.await, |c| {
            CreateConversationResponse::Created(Json(c))
        })
    }

    async fn get_thread(&self, api_key: String, params: GetThreadParams) -> GetThreadResponse {
        let result = async {
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, _) = participant!(self, api_key, params).await?;
            self.get_thread(&caller, &thread, params.fields.as_deref(), params.expand)
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
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, _) = participant!(self, api_key, params).await?;
            self.update_thread(&caller, &thread, body).await
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
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, reader) = participant!(self, api_key, params).await?;
            self.mark_thread_read(&caller, &reader, &thread).await
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
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, _) = participant!(self, api_key, params).await?;
            let order = params.order.unwrap_or(SortOrder::Asc);
            self.thread_messages(
                &caller,
                &thread,
                order,
                page_size(params.limit),
                params.cursor.as_deref(),
            )
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
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, author) = participant!(self, api_key, params).await?;
            self.send_message(&caller, &author, &thread, body).await
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
            let (caller, _) = participant!(self, api_key, params).await?;
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
            let (caller, _) = participant!(self, api_key, params).await?;
            self.delete_message(&caller, params.id).await
        };
        respond(result.await, |d| DeleteMessageResponse::Ok(Json(d)))
    }

    async fn list_message_edits(
        &self,
        api_key: String,
        params: ListMessageEditsParams,
    ) -> ListMessageEditsResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            self.message_edits(&caller, params.id).await
        };
        respond(result.await, |edits| {
            ListMessageEditsResponse::Ok(Json(MessageEditList { edits }))
        })
    }

    async fn list_subscribers(
        &self,
        api_key: String,
        params: ListSubscribersParams,
    ) -> ListSubscribersResponse {
        let result = async {
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, _) = participant!(self, api_key, params).await?;
            self.list_subscribers(
                &caller,
                &thread,
                page_size(params.limit),
                params.cursor.as_deref(),
            )
            .await
        };
        respond(result.await, |list| ListSubscribersResponse::Ok(Json(list)))
    }

    async fn add_subscriber(
        &self,
        api_key: String,
        params: AddSubscriberParams,
        body: AddSubscriberRequest,
    ) -> AddSubscriberResponse {
        let result = async {
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, _) = participant!(self, api_key, params).await?;
            self.add_subscriber(&caller, &thread, body).await
        };
        respond(result.await, |subscriber| {
            AddSubscriberResponse::Created(Json(SubscriberEnvelope { subscriber }))
        })
    }

    async fn remove_subscriber(
        &self,
        api_key: String,
        params: RemoveSubscriberParams,
    ) -> RemoveSubscriberResponse {
        let result = async {
            // Like a malformed UUID, a malformed thread id is 400 before anything else.
            let thread = ThreadRef::parse(&params.id)?;
            let (caller, _) = participant!(self, api_key, params).await?;
            self.remove_subscriber(&caller, &thread, &params.subscriber_id)
                .await
        };
        respond(result.await, |subscriber| {
            RemoveSubscriberResponse::Ok(Json(SubscriberEnvelope { subscriber }))
        })
    }

    async fn add_reaction(
        &self,
        api_key: String,
        params: AddReactionParams,
    ) -> AddReactionResponse {
        let result = async {
            let (caller, reactor) = participant!(self, api_key, params).await?;
            self.react(&caller, &reactor, params.id, &params.emoji, true)
                .await
        };
        respond(result.await, |message| {
            AddReactionResponse::Ok(Json(MessageEnvelope { message }))
        })
    }

    async fn remove_reaction(
        &self,
        api_key: String,
        params: RemoveReactionParams,
    ) -> RemoveReactionResponse {
        let result = async {
            let (caller, reactor) = participant!(self, api_key, params).await?;
            self.react(&caller, &reactor, params.id, &params.emoji, false)
                .await
        };
        respond(result.await, |message| {
            RemoveReactionResponse::Ok(Json(MessageEnvelope { message }))
        })
    }

    async fn list_channels(
        &self,
        api_key: String,
        params: ListChannelsParams,
    ) -> ListChannelsResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            self.list_channels(&caller, page_size(params.limit), params.cursor.as_deref())
                .await
        };
        respond(result.await, |list| ListChannelsResponse::Ok(Json(list)))
    }

    async fn get_channel(&self, api_key: String, params: GetChannelParams) -> GetChannelResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            self.get_channel(&caller, params.id).await
        };
        respond(result.await, |channel| {
            GetChannelResponse::Ok(Json(channel))
        })
    }

    async fn get_channel_messages(
        &self,
        api_key: String,
        params: GetChannelMessagesParams,
    ) -> GetChannelMessagesResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            let order = params.order.unwrap_or(SortOrder::Asc);
            self.channel_messages(
                &caller,
                params.id,
                order,
                page_size(params.limit),
                params.cursor.as_deref(),
            )
            .await
        };
        respond(result.await, |list| {
            GetChannelMessagesResponse::Ok(Json(list))
        })
    }

    async fn list_events(&self, api_key: String, params: ListEventsParams) -> ListEventsResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            // Validated by the generated layer (1 to 200, 0 to 30); the clamps only guard the
            // conversions.
            let wait = std::time::Duration::from_secs(params.wait.clamp(0, 30) as u64);
            self.list_events(
                &caller,
                params.after.as_deref(),
                page_size(params.limit),
                wait,
            )
            .await
        };
        respond(result.await, |list| ListEventsResponse::Ok(Json(list)))
    }

    async fn stream_events(
        &self,
        api_key: String,
        params: StreamEventsParams,
    ) -> StreamEventsResponse {
        let result = async {
            let (caller, _) = participant!(self, api_key, params).await?;
            self.stream_events(
                &caller,
                params.last_event_id.as_deref(),
                params.after.as_deref(),
            )
            .await
        };
        let keep_alive = self.event_keep_alive();
        respond(result.await, |events| {
            StreamEventsResponse::Ok(SseStream::new(events).keep_alive(keep_alive))
        })
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

    async fn list_webhook_endpoints(&self, api_key: String) -> ListWebhookEndpointsResponse {
        let result = async {
            let caller = self.secret_key_caller(&api_key).await?;
            self.list_webhook_endpoints(&caller).await
        };
        respond(result.await, |endpoints| {
            ListWebhookEndpointsResponse::Ok(Json(WebhookEndpointList { endpoints }))
        })
    }

    async fn create_webhook_endpoint(
        &self,
        api_key: String,
        // Only `Idempotency-Key`, which the server's middleware handles.
        _params: CreateWebhookEndpointParams,
        body: CreateWebhookEndpointRequest,
    ) -> CreateWebhookEndpointResponse {
        let result = async {
            let caller = self.secret_key_caller(&api_key).await?;
            self.create_webhook_endpoint(&caller, body).await
        };
        respond(result.await, |e| {
            CreateWebhookEndpointResponse::Created(Json(e))
        })
    }

    async fn get_webhook_endpoint(
        &self,
        api_key: String,
        params: GetWebhookEndpointParams,
    ) -> GetWebhookEndpointResponse {
        let result = async {
            let caller = self.secret_key_caller(&api_key).await?;
            self.get_webhook_endpoint(&caller, params.id).await
        };
        respond(result.await, |e| GetWebhookEndpointResponse::Ok(Json(e)))
    }

    async fn update_webhook_endpoint(
        &self,
        api_key: String,
        params: UpdateWebhookEndpointParams,
        body: UpdateWebhookEndpointRequest,
    ) -> UpdateWebhookEndpointResponse {
        let result = async {
            let caller = self.secret_key_caller(&api_key).await?;
            self.update_webhook_endpoint(&caller, params.id, body).await
        };
        respond(result.await, |e| UpdateWebhookEndpointResponse::Ok(Json(e)))
    }

    async fn delete_webhook_endpoint(
        &self,
        api_key: String,
        params: DeleteWebhookEndpointParams,
    ) -> DeleteWebhookEndpointResponse {
        let result = async {
            let caller = self.secret_key_caller(&api_key).await?;
            self.delete_webhook_endpoint(&caller, params.id).await
        };
        respond(result.await, |()| DeleteWebhookEndpointResponse::NoContent)
    }

    async fn list_webhook_deliveries(
        &self,
        api_key: String,
        params: ListWebhookDeliveriesParams,
    ) -> ListWebhookDeliveriesResponse {
        let result = async {
            let caller = self.secret_key_caller(&api_key).await?;
            self.list_webhook_deliveries(
                &caller,
                params.id,
                params.status,
                page_size(params.limit),
                params.cursor.as_deref(),
            )
            .await
        };
        respond(result.await, |list| {
            ListWebhookDeliveriesResponse::Ok(Json(list))
        })
    }
}
