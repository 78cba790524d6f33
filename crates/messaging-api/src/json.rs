//! The JSON payload of answers: written straight from the wire types with serde, instead of
//! poem-openapi's `Json`, which first builds a `serde_json::Value` tree of the whole answer
//! (every key and string copied) and then serializes that tree.
//!
//! The generated `Serialize` impls write the same JSON as poem-openapi's `ToJSON`: keys in name
//! order (its `serde_json::Map` is sorted), absent optional fields left out, enums by their wire
//! names and times as [`chrono::DateTime::to_rfc3339`] writes them. The served schema is the
//! same, since the schema still comes from poem-openapi's `Type`.

use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse,
    payload::Payload,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
};
use serde::Serialize;

/// A JSON answer (`application/json; charset=utf-8`) of a wire type.
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Type> Payload for Json<T> {
    const CONTENT_TYPE: &'static str = <poem_openapi::payload::Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <poem_openapi::payload::Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        poem::web::Json(self.0).into_response()
    }
}

impl<T: Type + Serialize + Send> ApiResponse for Json<T> {
    fn meta() -> MetaResponses {
        ok_payload_meta::<Self>()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// What a payload answered as a response declares: one 200 with its content type and schema
/// (the generated responses give the real status and description), as poem-openapi's own
/// payloads do.
pub(crate) fn ok_payload_meta<P: Payload>() -> MetaResponses {
    MetaResponses {
        responses: vec![MetaResponse {
            description: "",
            status: Some(200),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: P::CONTENT_TYPE,
                schema: P::schema_ref(),
            }],
            headers: vec![],
        }],
    }
}

/// A time written as poem-openapi writes it (`to_rfc3339`: `+00:00`, fractional seconds only
/// when there are any).
pub struct Rfc3339<'a>(pub &'a chrono::DateTime<chrono::Utc>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_rfc3339())
    }
}
