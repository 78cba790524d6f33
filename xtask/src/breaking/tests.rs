//! Each test edits a copy of the real `openapi/messaging.yaml` and asserts the exact lines
//! the check prints.

use openapiv3::OpenAPI;
use serde_yaml::Value;

use super::{Base, check, compare};
use crate::codegen::SPEC_PATH;

fn spec() -> Value {
    let text = std::fs::read_to_string(crate::workspace_root().join(SPEC_PATH)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn parse(spec: Value) -> OpenAPI {
    serde_yaml::from_value(spec).unwrap()
}

/// Every line reported for `base_edit(spec)` as the base and `base_edit` then `new_edit` as
/// the new spec.
fn diff(base_edit: impl FnOnce(&mut Value), new_edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut old = spec();
    base_edit(&mut old);
    let mut new = old.clone();
    new_edit(&mut new);
    let findings = compare(&parse(old), &parse(new)).unwrap();
    findings.iter().map(ToString::to_string).collect()
}

/// Every line reported when the real spec is edited.
fn after(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    diff(|_| {}, edit)
}

fn breaking(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| l.starts_with("breaking"))
        .collect()
}

fn breaking_after(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    breaking(after(edit))
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// The node at `keys` (sequence items by index).
fn at<'v>(node: &'v mut Value, keys: &[&str]) -> &'v mut Value {
    keys.iter().fold(node, |node, key| {
        let next = if node.is_sequence() {
            node.get_mut(key.parse::<usize>().unwrap())
        } else {
            node.get_mut(*key)
        };
        next.unwrap_or_else(|| panic!("no {key} in {keys:?}"))
    })
}

fn schema<'v>(spec: &'v mut Value, name: &str) -> &'v mut Value {
    at(spec, &["components", "schemas", name])
}

fn property<'v>(spec: &'v mut Value, schema_name: &str, name: &str) -> &'v mut Value {
    at(schema(spec, schema_name), &["properties", name])
}

fn operation<'v>(spec: &'v mut Value, path: &str, method: &str) -> &'v mut Value {
    at(spec, &["paths", path, method])
}

/// An inline parameter of an operation, by name.
fn parameter<'v>(spec: &'v mut Value, path: &str, method: &str, name: &str) -> &'v mut Value {
    let parameters = at(operation(spec, path, method), &["parameters"]);
    let parameters = parameters.as_sequence_mut().unwrap();
    parameters.iter_mut().find(|p| p["name"] == name).unwrap()
}

fn set(node: &mut Value, key: &str, value: &str) {
    node.as_mapping_mut()
        .unwrap()
        .insert(key.into(), yaml(value));
}

fn remove(node: &mut Value, key: &str) {
    let removed = node.as_mapping_mut().unwrap().remove(key);
    assert!(removed.is_some(), "no {key} to remove");
}

fn push(node: &mut Value, value: &str) {
    node.as_sequence_mut().unwrap().push(yaml(value));
}

fn remove_item(node: &mut Value, value: &str) {
    let items = node.as_sequence_mut().unwrap();
    let before = items.len();
    items.retain(|item| *item != yaml(value));
    assert_eq!(items.len(), before - 1, "{value} not found");
}

const THREADS: &str = "/v1/messaging/threads";
const THREAD: &str = "/v1/messaging/threads/{id}";
const THREAD_MESSAGES: &str = "/v1/messaging/threads/{id}/messages";
const MESSAGE: &str = "/v1/messaging/messages/{id}";

// The whole spec.

#[test]
fn the_spec_against_itself_reports_nothing() {
    assert_eq!(after(|_| {}), Vec::<String>::new());
}

#[test]
fn additive_changes_are_info_only() {
    let lines = after(|spec| {
        let parameters = at(operation(spec, THREADS, "get"), &["parameters"]);
        push(
            parameters,
            "{name: include_muted, in: query, required: false, schema: {type: boolean}}",
        );
        let properties = at(schema(spec, "DeletedMessage"), &["properties"]);
        set(properties, "reason", "{type: string}");
        let mut summary = serde_yaml::Mapping::new();
        summary.insert("get".into(), operation(spec, THREAD, "get").clone());
        set(&mut summary["get"], "operationId", "getThreadSummary");
        let paths = at(spec, &["paths"]).as_mapping_mut().unwrap();
        paths.insert("/v1/messaging/threads/{id}/summary".into(), summary.into());
    });
    assert_eq!(
        lines,
        [
            "info      parameter-added  GET /v1/messaging/threads query include_muted",
            "info      response-property-added  DELETE /v1/messaging/messages/{id} 200: reason",
            "info      operation-added  GET /v1/messaging/threads/{id}/summary (getThreadSummary)",
        ]
    );
}

#[test]
fn relaxed_request_constraints_and_docs_are_info() {
    let lines = after(|spec| {
        set(
            &mut parameter(spec, THREADS, "get", "limit")["schema"],
            "maximum",
            "500",
        );
        set(
            property(spec, "CreateConversationRequest", "subject"),
            "maxLength",
            "1000",
        );
        set(operation(spec, THREADS, "get"), "summary", "List threads");
    });
    assert_eq!(
        lines,
        [
            "info      docs-changed  GET /v1/messaging/threads (summary)",
            "info      parameter-constraint-relaxed  GET /v1/messaging/threads query limit (maximum 200 -> 500)",
            "info      request-constraint-relaxed  POST /v1/messaging/threads body: subject (maxLength 300 -> 1000)",
        ]
    );
}

// Operations.

#[test]
fn operation_removed() {
    let lines = breaking_after(|spec| remove(at(spec, &["paths"]), "/v1/auth/refresh"));
    assert_eq!(
        lines,
        ["breaking  operation-removed  POST /v1/auth/refresh (refreshSession)"]
    );
}

#[test]
fn operation_id_changed() {
    let lines = breaking_after(|spec| {
        set(
            operation(spec, THREADS, "get"),
            "operationId",
            "listAllThreads",
        )
    });
    assert_eq!(
        lines,
        [
            "breaking  operation-id-changed  GET /v1/messaging/threads (listThreads -> listAllThreads)"
        ]
    );
}

#[test]
fn a_renamed_path_parameter_is_the_same_operation_with_other_parameters() {
    let old_path = "/v1/messaging/threads/{id}/subscribers/{subscriber_id}";
    let new_path = "/v1/messaging/threads/{id}/subscribers/{member_id}";
    let lines = breaking_after(|spec| {
        let paths = at(spec, &["paths"]).as_mapping_mut().unwrap();
        let mut item = paths.remove(old_path).unwrap();
        let parameters = item["delete"]["parameters"].as_sequence_mut().unwrap();
        let renamed = parameters
            .iter_mut()
            .find(|p| p["name"] == "subscriber_id")
            .unwrap();
        set(renamed, "name", "member_id");
        paths.insert(new_path.into(), item);
    });
    assert_eq!(
        lines,
        [
            "breaking  parameter-removed  DELETE /v1/messaging/threads/{id}/subscribers/{member_id} path subscriber_id",
            "breaking  parameter-added-required  DELETE /v1/messaging/threads/{id}/subscribers/{member_id} path member_id",
        ]
    );
}

// Parameters.

#[test]
fn parameter_removed() {
    let lines = breaking_after(|spec| {
        let parameters = at(operation(spec, THREAD_MESSAGES, "get"), &["parameters"]);
        parameters
            .as_sequence_mut()
            .unwrap()
            .retain(|p| p["name"] != "order");
    });
    assert_eq!(
        lines,
        ["breaking  parameter-removed  GET /v1/messaging/threads/{id}/messages query order"]
    );
}

#[test]
fn parameter_added_as_required() {
    let lines = breaking_after(|spec| {
        let parameters = at(operation(spec, THREADS, "get"), &["parameters"]);
        push(
            parameters,
            "{name: store_id, in: query, required: true, schema: {type: string}}",
        );
    });
    assert_eq!(
        lines,
        ["breaking  parameter-added-required  GET /v1/messaging/threads query store_id"]
    );
}

#[test]
fn parameter_made_required() {
    let lines = breaking_after(|spec| {
        set(
            parameter(spec, THREADS, "get", "customer_id"),
            "required",
            "true",
        );
    });
    assert_eq!(
        lines,
        ["breaking  parameter-made-required  GET /v1/messaging/threads query customer_id"]
    );
}

#[test]
fn parameter_moved() {
    let lines =
        breaking_after(|spec| set(parameter(spec, THREADS, "get", "cursor"), "in", "header"));
    assert_eq!(
        lines,
        ["breaking  parameter-moved  GET /v1/messaging/threads query cursor (query -> header)"]
    );
}

#[test]
fn parameter_type_changed() {
    let lines = breaking_after(|spec| {
        set(
            parameter(spec, THREADS, "get", "limit"),
            "schema",
            "{type: string}",
        );
    });
    assert_eq!(
        lines,
        [
            "breaking  parameter-type-changed  GET /v1/messaging/threads query limit (integer -> string)"
        ]
    );
}

#[test]
fn parameter_format_changed() {
    let lines = breaking_after(|spec| {
        remove(
            &mut parameter(spec, THREADS, "get", "customer_id")["schema"],
            "format",
        );
    });
    assert_eq!(
        lines,
        [
            "breaking  parameter-format-changed  GET /v1/messaging/threads query customer_id (uuid -> none)"
        ]
    );
}

#[test]
fn parameter_enum_value_removed() {
    // SortOrder is the `order` parameter of both message lists.
    let lines = breaking_after(|spec| remove_item(&mut schema(spec, "SortOrder")["enum"], "asc"));
    assert_eq!(
        lines,
        [
            "breaking  parameter-enum-value-removed  GET /v1/messaging/threads/{id}/messages query order (\"asc\")",
            "breaking  parameter-enum-value-removed  GET /v1/messaging/channels/{id}/messages query order (\"asc\")",
        ]
    );
}

#[test]
fn parameter_constraint_tightened() {
    let lines = breaking_after(|spec| {
        let limit = &mut parameter(spec, THREADS, "get", "limit")["schema"];
        set(limit, "maximum", "100");
        set(limit, "minimum", "5");
    });
    assert_eq!(
        lines,
        [
            "breaking  parameter-constraint-tightened  GET /v1/messaging/threads query limit (minimum 1 -> 5)",
            "breaking  parameter-constraint-tightened  GET /v1/messaging/threads query limit (maximum 200 -> 100)",
        ]
    );
}

// Request bodies.

#[test]
fn request_body_added_as_required() {
    let lines = breaking_after(|spec| {
        let body = "{required: true, content: {application/json: {schema: {$ref: '#/components/schemas/EditMessageRequest'}}}}";
        set(
            operation(spec, "/v1/messaging/threads/{id}/read", "post"),
            "requestBody",
            body,
        );
    });
    assert_eq!(
        lines,
        ["breaking  request-body-added-required  POST /v1/messaging/threads/{id}/read body"]
    );
}

#[test]
fn request_body_made_required() {
    let lines = diff(
        |spec| {
            set(
                at(operation(spec, THREADS, "post"), &["requestBody"]),
                "required",
                "false",
            )
        },
        |spec| {
            set(
                at(operation(spec, THREADS, "post"), &["requestBody"]),
                "required",
                "true",
            )
        },
    );
    assert_eq!(
        breaking(lines),
        ["breaking  request-body-made-required  POST /v1/messaging/threads body"]
    );
}

#[test]
fn request_body_and_media_type_removed() {
    let lines = breaking_after(|spec| {
        remove(operation(spec, MESSAGE, "patch"), "requestBody");
        let content = at(
            operation(spec, THREADS, "post"),
            &["requestBody", "content"],
        );
        let json = content
            .as_mapping_mut()
            .unwrap()
            .remove("application/json")
            .unwrap();
        content
            .as_mapping_mut()
            .unwrap()
            .insert("application/x-www-form-urlencoded".into(), json);
    });
    assert_eq!(
        lines,
        [
            "breaking  request-media-type-removed  POST /v1/messaging/threads body (application/json)",
            "breaking  request-body-removed  PATCH /v1/messaging/messages/{id} body",
        ]
    );
}

#[test]
fn request_property_added_as_required() {
    let lines = breaking_after(|spec| {
        let request = schema(spec, "CreateConversationRequest");
        set(at(request, &["properties"]), "channel", "{type: string}");
        push(at(request, &["required"]), "channel");
    });
    assert_eq!(
        lines,
        ["breaking  request-property-added-required  POST /v1/messaging/threads body: channel"]
    );
}

#[test]
fn request_property_made_required() {
    let lines = breaking_after(|spec| {
        push(
            at(schema(spec, "CreateConversationRequest"), &["required"]),
            "priority",
        );
    });
    assert_eq!(
        lines,
        ["breaking  request-property-made-required  POST /v1/messaging/threads body: priority"]
    );
}

#[test]
fn request_property_removed() {
    let lines = breaking_after(|spec| {
        remove(
            at(schema(spec, "CreateConversationRequest"), &["properties"]),
            "order_id",
        );
    });
    assert_eq!(
        lines,
        ["breaking  request-property-removed  POST /v1/messaging/threads body: order_id"]
    );
}

#[test]
fn request_type_and_format_changed() {
    let lines = breaking_after(|spec| {
        set(
            property(spec, "SendMessageRequest", "media_urls"),
            "type",
            "string",
        );
        remove(property(spec, "SendMessageRequest", "media_urls"), "items");
        remove(
            property(spec, "SendMessageRequest", "media_urls"),
            "maxItems",
        );
        set(
            property(spec, "SendMessageRequest", "publish_to_channel_at"),
            "format",
            "date",
        );
    });
    assert_eq!(
        lines,
        [
            "breaking  request-type-changed  POST /v1/messaging/threads/{id}/messages body: media_urls (array -> string)",
            "breaking  request-format-changed  POST /v1/messaging/threads/{id}/messages body: publish_to_channel_at (date-time -> date)",
        ]
    );
}

#[test]
fn request_enum_value_removed() {
    // MessageType is also in responses, where a value removed is not breaking.
    let lines = after(|spec| remove_item(&mut schema(spec, "MessageType")["enum"], "meta"));
    assert_eq!(
        breaking(lines.clone()),
        [
            "breaking  request-enum-value-removed  POST /v1/messaging/threads/{id}/messages body: type (\"meta\")"
        ]
    );
    assert!(lines.contains(
        &"info      response-enum-value-removed  GET /v1/messaging/threads/{id}/messages 200: messages[].type (\"meta\")".to_owned()
    ));
}

#[test]
fn request_constraints_tightened() {
    let lines = breaking_after(|spec| {
        set(
            property(spec, "CreateConversationRequest", "subject"),
            "maxLength",
            "200",
        );
        set(
            property(spec, "CreateConversationRequest", "message"),
            "minLength",
            "10",
        );
        set(
            property(spec, "CreateConversationRequest", "resource_id"),
            "pattern",
            "'^[a-z]+$'",
        );
        set(
            property(spec, "CreateConversationRequest", "order_id"),
            "pattern",
            "'^ord_'",
        );
        set(
            property(spec, "SendMessageRequest", "media_urls"),
            "maxItems",
            "5",
        );
        set(schema(spec, "OtpRequest"), "additionalProperties", "false");
    });
    assert_eq!(
        lines,
        [
            "breaking  request-constraint-tightened  POST /v1/messaging/threads body: subject (maxLength 300 -> 200)",
            "breaking  request-constraint-tightened  POST /v1/messaging/threads body: message (minLength 1 -> 10)",
            "breaking  request-constraint-tightened  POST /v1/messaging/threads body: order_id (pattern none -> ^ord_)",
            "breaking  request-constraint-changed  POST /v1/messaging/threads body: resource_id (pattern ^[A-Za-z0-9._:-]+$ -> ^[a-z]+$)",
            "breaking  request-constraint-tightened  POST /v1/messaging/threads/{id}/messages body: media_urls (maxItems 10 -> 5)",
            "breaking  request-constraint-tightened  POST /v1/auth/otp body (additionalProperties none -> false)",
        ]
    );
}

#[test]
fn request_nullable_removed() {
    let lines = diff(
        |spec| {
            set(
                property(spec, "SendMessageRequest", "event"),
                "nullable",
                "true",
            )
        },
        |spec| remove(property(spec, "SendMessageRequest", "event"), "nullable"),
    );
    assert_eq!(
        breaking(lines),
        [
            "breaking  request-nullable-removed  POST /v1/messaging/threads/{id}/messages body: event"
        ]
    );
}

// Responses.

#[test]
fn success_status_removed() {
    let lines = breaking_after(|spec| {
        remove(
            at(operation(spec, MESSAGE, "delete"), &["responses"]),
            "200",
        )
    });
    assert_eq!(
        lines,
        ["breaking  success-status-removed  DELETE /v1/messaging/messages/{id} 200"]
    );
}

#[test]
fn success_status_changed() {
    let lines = breaking_after(|spec| {
        let responses = at(operation(spec, "/v1/auth/register", "post"), &["responses"]);
        let responses = responses.as_mapping_mut().unwrap();
        let created = responses.remove("201").unwrap();
        responses.insert("200".into(), created);
    });
    assert_eq!(
        lines,
        ["breaking  success-status-changed  POST /v1/auth/register (201 -> 200)"]
    );
}

#[test]
fn error_status_removed_is_info() {
    let lines = after(|spec| remove(at(operation(spec, THREADS, "post"), &["responses"]), "409"));
    assert_eq!(
        lines,
        ["info      error-status-removed  POST /v1/messaging/threads 409"]
    );
}

#[test]
fn response_property_removed() {
    let lines = breaking_after(|spec| {
        remove(
            at(schema(spec, "DeletedMessage"), &["properties"]),
            "deleted_at",
        );
        remove_item(
            at(schema(spec, "DeletedMessage"), &["required"]),
            "deleted_at",
        );
    });
    assert_eq!(
        lines,
        ["breaking  response-property-removed  DELETE /v1/messaging/messages/{id} 200: deleted_at"]
    );
}

#[test]
fn a_shared_schema_is_reported_where_each_operation_returns_it() {
    let lines =
        breaking_after(|spec| remove(at(schema(spec, "Thread"), &["properties"]), "subject"));
    assert_eq!(
        lines,
        [
            "breaking  response-property-removed  GET /v1/messaging/threads 200: threads[].subject",
            "breaking  response-property-removed  POST /v1/messaging/threads 201: thread.subject",
            "breaking  response-property-removed  GET /v1/messaging/threads/{id} 200: subject",
            "breaking  response-property-removed  PATCH /v1/messaging/threads/{id} 200: thread.subject",
            "breaking  response-property-removed  POST /v1/messaging/threads/{id}/read 200: thread.subject",
            "breaking  response-property-removed  GET /v1/messaging/events 200: events[].data.thread.subject",
            "breaking  response-property-removed  GET /v1/messaging/events/stream 200: [].data.thread.subject",
        ]
    );
}

#[test]
fn response_type_and_format_changed() {
    let lines = breaking_after(|spec| {
        set(
            property(spec, "DeletedMessage", "success"),
            "type",
            "string",
        );
        remove(property(spec, "DeletedMessage", "message_id"), "format");
    });
    assert_eq!(
        lines,
        [
            "breaking  response-type-changed  DELETE /v1/messaging/messages/{id} 200: success (boolean -> string)",
            "breaking  response-format-changed  DELETE /v1/messaging/messages/{id} 200: message_id (uuid -> none)",
        ]
    );
}

#[test]
fn response_nullable_added() {
    let lines = breaking_after(|spec| {
        set(
            property(spec, "DeletedMessage", "deleted_at"),
            "nullable",
            "true",
        )
    });
    assert_eq!(
        lines,
        ["breaking  response-nullable-added  DELETE /v1/messaging/messages/{id} 200: deleted_at"]
    );
}

#[test]
fn response_property_made_optional() {
    let lines = breaking_after(|spec| {
        remove_item(
            at(schema(spec, "DeletedMessage"), &["required"]),
            "deleted_at",
        );
    });
    assert_eq!(
        lines,
        [
            "breaking  response-property-made-optional  DELETE /v1/messaging/messages/{id} 200: deleted_at"
        ]
    );
}

#[test]
fn response_enum_value_added() {
    let reason = |values: &'static str| {
        move |spec: &mut Value| {
            let properties = at(schema(spec, "DeletedMessage"), &["properties"]);
            set(
                properties,
                "reason",
                &format!("{{type: string, enum: [{values}]}}"),
            );
        }
    };
    let lines = diff(
        reason("author, moderator"),
        reason("author, moderator, retention"),
    );
    assert_eq!(
        lines,
        [
            "breaking  response-enum-value-added  DELETE /v1/messaging/messages/{id} 200: reason (\"retention\")"
        ]
    );
}

#[test]
fn an_enum_value_added_breaks_responses_only() {
    let lines = after(|spec| push(&mut schema(spec, "ThreadStatus")["enum"], "archived"));
    let breaking_rules: Vec<_> = breaking(lines.clone())
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    // getThread, listThreads, createConversation, updateThread, markThreadRead, and the two
    // event reads (a thread inside `data`).
    assert_eq!(breaking_rules, ["response-enum-value-added"; 7]);
    for line in [
        "breaking  response-enum-value-added  GET /v1/messaging/threads/{id} 200: status (\"archived\")",
        "info      parameter-enum-value-added  GET /v1/messaging/threads query status (\"archived\")",
        "info      request-enum-value-added  PATCH /v1/messaging/threads/{id} body: status (\"archived\")",
    ] {
        assert!(
            lines.contains(&line.to_owned()),
            "{line} missing from {lines:#?}"
        );
    }
}

#[test]
fn response_constraint_relaxed() {
    let max_length = |value: &'static str| {
        move |spec: &mut Value| {
            set(
                property(spec, "DeletedMessage", "message_id"),
                "maxLength",
                value,
            )
        }
    };
    let relaxed = diff(max_length("36"), max_length("64"));
    assert_eq!(
        relaxed,
        [
            "breaking  response-constraint-relaxed  DELETE /v1/messaging/messages/{id} 200: message_id (maxLength 36 -> 64)"
        ]
    );
    let tightened = diff(max_length("64"), max_length("36"));
    assert_eq!(
        tightened,
        [
            "info      response-constraint-tightened  DELETE /v1/messaging/messages/{id} 200: message_id (maxLength 64 -> 36)"
        ]
    );
}

#[test]
fn response_media_type_and_header_removed() {
    let lines = breaking_after(|spec| {
        let content = at(
            operation(spec, MESSAGE, "delete"),
            &["responses", "200", "content"],
        );
        let json = content
            .as_mapping_mut()
            .unwrap()
            .remove("application/json")
            .unwrap();
        content
            .as_mapping_mut()
            .unwrap()
            .insert("text/plain".into(), json);
        remove(
            at(
                spec,
                &["components", "responses", "TooManyRequests", "headers"],
            ),
            "Retry-After",
        );
    });
    let operations = parse(spec()).operations().count();
    assert_eq!(lines.len(), operations + 1);
    assert!(lines.contains(
        &"breaking  response-media-type-removed  DELETE /v1/messaging/messages/{id} 200 (application/json)".to_owned()
    ));
    let header = "breaking  response-header-removed  GET /v1/messaging/threads 429 (Retry-After)";
    assert_eq!(lines[0], header);
    let headers = lines
        .iter()
        .filter(|l| l.contains("response-header-removed"));
    assert!(headers.clone().all(|l| l.ends_with(" 429 (Retry-After)")));
    assert_eq!(headers.count(), operations);
}

#[test]
fn recursive_schemas_are_compared_once() {
    let lines = diff(
        |spec| {
            set(
                at(schema(spec, "Thread"), &["properties"]),
                "parent",
                "{$ref: '#/components/schemas/Thread'}",
            );
            let replies = "{type: array, items: {$ref: '#/components/schemas/Message'}}";
            set(
                at(schema(spec, "Message"), &["properties"]),
                "replies",
                replies,
            );
        },
        |spec| {
            set(property(spec, "Thread", "subject"), "type", "integer");
        },
    );
    assert_eq!(
        lines,
        [
            "breaking  response-type-changed  GET /v1/messaging/threads 200: threads[].subject (string -> integer)",
            "breaking  response-type-changed  POST /v1/messaging/threads 201: thread.subject (string -> integer)",
            "breaking  response-type-changed  GET /v1/messaging/threads/{id} 200: subject (string -> integer)",
            "breaking  response-type-changed  PATCH /v1/messaging/threads/{id} 200: thread.subject (string -> integer)",
            "breaking  response-type-changed  POST /v1/messaging/threads/{id}/read 200: thread.subject (string -> integer)",
            "breaking  response-type-changed  GET /v1/messaging/events 200: events[].data.thread.subject (string -> integer)",
            "breaking  response-type-changed  GET /v1/messaging/events/stream 200: [].data.thread.subject (string -> integer)",
        ]
    );
}

// Security.

#[test]
fn security_requirement_added() {
    let lines = diff(
        |spec| set(operation(spec, "/v1/auth/login", "post"), "security", "[]"),
        |spec| {
            set(
                operation(spec, "/v1/auth/login", "post"),
                "security",
                "[{apiKey: []}]",
            )
        },
    );
    assert_eq!(
        lines,
        ["breaking  security-requirement-added  POST /v1/auth/login (none -> apiKey)"]
    );

    let both = after(|spec| {
        let schemes = at(spec, &["components", "securitySchemes"]);
        set(
            schemes,
            "session",
            "{type: apiKey, in: header, name: x-session}",
        );
        set(
            operation(spec, "/v1/auth/login", "post"),
            "security",
            "[{apiKey: [], session: []}]",
        );
    });
    assert_eq!(
        both,
        [
            "breaking  security-requirement-added  POST /v1/auth/login (apiKey -> apiKey + session)",
            "info      security-scheme-added  security scheme session",
        ]
    );
}

#[test]
fn security_requirement_removed_is_info() {
    let lines = after(|spec| set(operation(spec, "/v1/auth/login", "post"), "security", "[]"));
    assert_eq!(
        lines,
        ["info      security-requirement-removed  POST /v1/auth/login (apiKey -> none)"]
    );
}

#[test]
fn security_scheme_removed_or_changed() {
    let removed =
        breaking_after(|spec| remove(at(spec, &["components", "securitySchemes"]), "apiKey"));
    assert_eq!(
        removed,
        ["breaking  security-scheme-removed  security scheme apiKey"]
    );

    let changed = breaking_after(|spec| {
        let scheme = "{type: apiKey, in: header, name: x-api-key}";
        set(
            at(spec, &["components", "securitySchemes"]),
            "apiKey",
            scheme,
        );
    });
    assert_eq!(
        changed,
        [
            r#"breaking  security-scheme-changed  security scheme apiKey ({"scheme":"bearer","type":"http"} -> {"in":"header","name":"x-api-key","type":"apiKey"})"#
        ]
    );
}

// Errors.

#[test]
fn a_dangling_ref_is_an_error() {
    let mut new = spec();
    set(
        property(&mut new, "DeletedMessage", "success"),
        "$ref",
        "'#/components/schemas/Nope'",
    );
    let error = compare(&parse(spec()), &parse(new)).unwrap_err();
    assert!(
        format!("{error:#}").contains("#/components/schemas/Nope points at nothing"),
        "{error:#}"
    );
}

#[test]
fn bases_that_cannot_be_read_are_errors() {
    let root = crate::workspace_root();
    let error = check(&root, &Base::Git("no-such-ref-0x1f".into())).unwrap_err();
    assert!(
        format!("{error:#}").contains("no-such-ref-0x1f"),
        "{error:#}"
    );

    let file = std::env::temp_dir().join(format!("xtask-breaking-{}.yaml", std::process::id()));
    std::fs::write(&file, "openapi: [").unwrap();
    let error = check(&root, &Base::File(file.clone())).unwrap_err();
    std::fs::remove_file(&file).unwrap();
    assert!(
        format!("{error:#}").contains(&format!("parsing {}", file.display())),
        "{error:#}"
    );
}

#[test]
fn a_base_file_is_compared_with_the_working_tree() {
    let root = crate::workspace_root();
    let findings = check(&root, &Base::File(root.join(SPEC_PATH))).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}
