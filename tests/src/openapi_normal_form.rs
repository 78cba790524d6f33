//! The semantic normal form of an OpenAPI 3.0 document: what is only representation (key
//! order, `$ref`s to non-schema components, written-out defaults, number formatting, header
//! name case, description whitespace, the patch version, example date-time offsets) is made
//! identical, so that two documents are equal exactly when they describe the same API.
//! Response `links` are dropped too: they document how operations chain (for readers, Swagger UI
//! and schemathesis's stateful phase), nothing on the wire, and poem-openapi has no way to declare
//! them, so only the checked-in spec (served verbatim at `/openapi.yaml`) carries them.

use serde_json::{Map, Number, Value};

/// Component sections whose `$ref`s are resolved inline; the sections themselves are dropped.
const INLINED_SECTIONS: [&str; 4] = ["parameters", "responses", "headers", "requestBodies"];

/// The normal form of `document`. Each step is a plain function below.
pub fn normalise(document: &Value) -> Value {
    let mut doc = document.clone();
    inline_component_refs(&mut doc);
    drop_inlined_sections(&mut doc);
    drop_empty_component_sections(&mut doc);
    drop_schema_titles_equal_to_names(&mut doc);
    normalise_openapi_version(&mut doc);
    drop_empty_servers(&mut doc);
    normalise_operations(&mut doc);
    walk(&mut doc, &mut |key, value| {
        normalise_number(value);
        if key == Some("description") {
            normalise_description(value);
        }
        if key == Some("example") {
            normalise_example_date_times(value);
        }
        if key == Some("deprecated") && *value == Value::Bool(false) {
            return Visit::Remove;
        }
        if key == Some("content") {
            strip_media_type_parameters(value);
        }
        if key == Some("required") {
            sort_string_list(value);
        }
        Visit::Keep
    });
    doc
}

/// What a visitor wants done with the value it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    Keep,
    Remove,
}

/// Visits every value depth-first (children after the parent), with the key it sits under.
pub fn walk(value: &mut Value, visit: &mut impl FnMut(Option<&str>, &mut Value) -> Visit) {
    walk_children(value, visit);
}

fn walk_children(value: &mut Value, visit: &mut impl FnMut(Option<&str>, &mut Value) -> Visit) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = map.get_mut(&key).expect("the key was just listed");
                if visit(Some(&key), child) == Visit::Remove {
                    map.remove(&key);
                } else {
                    walk_children(child, visit);
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                // Array items are visited too (numbers in enums, examples…), never removed.
                let _ = visit(None, item);
                walk_children(item, visit);
            }
        }
        _ => {}
    }
}

/// Replaces `{"$ref": "#/components/<section>/<name>"}` for the inlined sections by a copy of
/// the target, recursively.
pub fn inline_component_refs(doc: &mut Value) {
    let components = doc.get("components").cloned().unwrap_or(Value::Null);
    inline_refs_in(doc, &components, 0);
}

fn inline_refs_in(value: &mut Value, components: &Value, depth: usize) {
    assert!(depth < 64, "component $refs nest too deep (a cycle?)");
    if let Some(target) = inlined_target(value, components) {
        *value = target.clone();
        inline_refs_in(value, components, depth + 1);
        return;
    }
    match value {
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| inline_refs_in(v, components, depth)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| inline_refs_in(v, components, depth)),
        _ => {}
    }
}

fn inlined_target<'a>(value: &Value, components: &'a Value) -> Option<&'a Value> {
    let reference = value.get("$ref")?.as_str()?;
    let (section, name) = reference.strip_prefix("#/components/")?.split_once('/')?;
    if !INLINED_SECTIONS.contains(&section) {
        return None;
    }
    components.get(section)?.get(name)
}

fn drop_inlined_sections(doc: &mut Value) {
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        for section in INLINED_SECTIONS {
            components.remove(section);
        }
    }
}

fn drop_empty_component_sections(doc: &mut Value) {
    let Some(map) = doc.as_object_mut() else {
        return;
    };
    if let Some(components) = map.get_mut("components").and_then(Value::as_object_mut) {
        components.retain(|_, section| !is_empty_container(section));
    }
    if map.get("components").is_some_and(is_empty_container) {
        map.remove("components");
    }
}

fn is_empty_container(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// poem-openapi always writes `title: <component name>` on object schemas.
pub fn drop_schema_titles_equal_to_names(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (name, schema) in schemas.iter_mut() {
        if let Some(schema) = schema.as_object_mut()
            && schema.get("title").and_then(Value::as_str) == Some(name.as_str())
        {
            schema.remove("title");
        }
    }
}

/// `3.0.0` and `3.0.3` describe the same document; keep `major.minor`.
pub fn normalise_openapi_version(doc: &mut Value) {
    if let Some(Value::String(version)) = doc.get_mut("openapi") {
        let major_minor: Vec<&str> = version.split('.').take(2).collect();
        *version = major_minor.join(".");
    }
}

fn drop_empty_servers(doc: &mut Value) {
    if let Some(map) = doc.as_object_mut()
        && map.get("servers").is_some_and(is_empty_container)
    {
        map.remove("servers");
    }
}

/// Parameters keyed by `in:name` (their order carries no meaning) with defaults dropped, and
/// response header names lower-cased.
fn normalise_operations(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for path_item in paths.values_mut().filter_map(Value::as_object_mut) {
        for (key, node) in path_item.iter_mut() {
            if key == "parameters" {
                key_parameters(node);
            } else if let Some(operation) = node.as_object_mut() {
                normalise_operation(operation);
            }
        }
    }
}

fn normalise_operation(operation: &mut Map<String, Value>) {
    if let Some(parameters) = operation.get_mut("parameters") {
        key_parameters(parameters);
    }
    if let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    {
        for response in responses.values_mut().filter_map(Value::as_object_mut) {
            response.remove("links");
            if let Some(headers) = response.get_mut("headers") {
                normalise_headers(headers);
            }
        }
    }
}

/// `[{name, in, …}]` becomes `{"in:name": {…}}` with default `required`, `style` and `explode`
/// dropped.
pub fn key_parameters(parameters: &mut Value) {
    let Value::Array(items) = parameters else {
        return;
    };
    let mut keyed = Map::new();
    for mut parameter in std::mem::take(items) {
        drop_parameter_defaults(&mut parameter);
        let location = parameter
            .get("in")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let name = parameter
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        keyed.insert(format!("{location}:{name}"), parameter);
    }
    *parameters = Value::Object(keyed);
}

fn drop_parameter_defaults(parameter: &mut Value) {
    let Some(map) = parameter.as_object_mut() else {
        return;
    };
    let location = map
        .get("in")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let default_style = if matches!(location.as_str(), "query" | "cookie") {
        "form"
    } else {
        "simple"
    };
    if map.get("style").and_then(Value::as_str) == Some(default_style) {
        map.remove("style");
    }
    let is_array = map
        .get("schema")
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        == Some("array");
    let default_explode = default_style == "form";
    if !is_array || map.get("explode").and_then(Value::as_bool) == Some(default_explode) {
        map.remove("explode");
    }
    if map.get("required") == Some(&Value::Bool(false)) {
        map.remove("required");
    }
}

/// Response header names are case-insensitive; `required: false` is the default.
pub fn normalise_headers(headers: &mut Value) {
    let Value::Object(map) = headers else {
        return;
    };
    let lowered: Map<String, Value> = std::mem::take(map)
        .into_iter()
        .map(|(name, mut header)| {
            if let Some(h) = header.as_object_mut() {
                if h.get("required") == Some(&Value::Bool(false)) {
                    h.remove("required");
                }
                // `style: simple` is the only style for headers.
                if h.get("style").and_then(Value::as_str) == Some("simple") {
                    h.remove("style");
                }
                if h.get("explode") == Some(&Value::Bool(false)) {
                    h.remove("explode");
                }
            }
            (name.to_ascii_lowercase(), header)
        })
        .collect();
    *map = lowered;
}

/// `200.0` and `200` are the same number.
pub fn normalise_number(value: &mut Value) {
    let Value::Number(number) = value else {
        return;
    };
    if number.is_f64() {
        let float = number.as_f64().expect("is_f64 numbers have an f64 value");
        if float.fract() == 0.0 && float.abs() < 9.0e15 {
            #[allow(clippy::cast_possible_truncation)]
            let integer = float as i64;
            *number = Number::from(integer);
        }
    }
}

/// Each line trimmed, then the whole text trimmed.
pub fn normalise_description(value: &mut Value) {
    if let Value::String(text) = value {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        *text = lines.join("\n").trim().to_owned();
    }
}

/// Date-times inside examples as one canonical UTC form (`Z`, not `+00:00`).
pub fn normalise_example_date_times(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Ok(instant) = chrono::DateTime::parse_from_rfc3339(text) {
                *text = instant
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            }
        }
        Value::Object(map) => map.values_mut().for_each(normalise_example_date_times),
        Value::Array(items) => items.iter_mut().for_each(normalise_example_date_times),
        _ => {}
    }
}

/// `application/json; charset=utf-8` is `application/json`. Only keys that look like media
/// types are touched (a schema property may be called `content`).
pub fn strip_media_type_parameters(content: &mut Value) {
    let Value::Object(map) = content else {
        return;
    };
    let stripped: Map<String, Value> = std::mem::take(map)
        .into_iter()
        .map(|(key, body)| match key.contains('/') {
            true => (
                key.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase(),
                body,
            ),
            false => (key, body),
        })
        .collect();
    *map = stripped;
}

/// `required: [b, a]` is the set `{a, b}`: sorts a list of strings.
pub fn sort_string_list(value: &mut Value) {
    if let Value::Array(items) = value
        && items.iter().all(Value::is_string)
    {
        items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parameter_refs_are_inlined_and_sections_dropped() {
        let doc = json!({
            "paths": {"/x/{id}": {"get": {"parameters": [{"$ref": "#/components/parameters/Id"}]}}},
            "components": {"parameters": {"Id": {"name": "id", "in": "path", "required": true}}}
        });
        let normal = normalise(&doc);
        assert_eq!(
            normal,
            json!({"paths": {"/x/{id}": {"get": {"parameters": {
                "path:id": {"name": "id", "in": "path", "required": true}
            }}}}})
        );
    }

    #[test]
    fn response_refs_and_header_case_are_normalised() {
        let doc = json!({
            "paths": {"/x": {"get": {"responses": {"429": {"$ref": "#/components/responses/Limited"}}}}},
            "components": {"responses": {"Limited": {
                "description": "Limited.",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}}
            }}}
        });
        let served = json!({
            "paths": {"/x": {"get": {"responses": {"429": {
                "description": "Limited.",
                "headers": {"RETRY-AFTER": {"required": false, "deprecated": false, "schema": {"type": "integer"}}}
            }}}}},
            "components": {}
        });
        assert_eq!(normalise(&doc), normalise(&served));
    }

    #[test]
    fn response_links_are_dropped() {
        let doc = json!({"paths": {"/x": {"post": {"responses": {"201": {
            "description": "Made.",
            "links": {"getX": {"operationId": "getX", "parameters": {"id": "$response.body#/id"}}}
        }}}}}});
        let served =
            json!({"paths": {"/x": {"post": {"responses": {"201": {"description": "Made."}}}}}});
        assert_eq!(normalise(&doc), normalise(&served));
    }

    #[test]
    fn schema_refs_are_kept() {
        let doc = json!({"components": {"schemas": {"A": {"$ref": "#/components/schemas/B"}, "B": {"type": "string"}}}});
        assert_eq!(normalise(&doc), doc);
    }

    #[test]
    fn defaults_are_dropped() {
        let written = json!({"paths": {"/x": {"get": {"deprecated": false, "parameters": [
            {"name": "a", "in": "query", "required": false, "style": "form", "explode": true, "deprecated": false,
             "schema": {"type": "string"}},
            {"name": "b", "in": "query", "explode": false, "schema": {"type": "array", "items": {"type": "string"}}}
        ]}}}, "servers": []});
        let omitted = json!({"paths": {"/x": {"get": {"parameters": [
            {"name": "a", "in": "query", "schema": {"type": "string"}},
            {"name": "b", "in": "query", "explode": false, "schema": {"type": "array", "items": {"type": "string"}}}
        ]}}}});
        assert_eq!(normalise(&written), normalise(&omitted));
    }

    #[test]
    fn explode_on_arrays_is_kept_when_it_differs_from_the_default() {
        let doc = json!({"paths": {"/x": {"get": {"parameters": [
            {"name": "b", "in": "query", "explode": false, "schema": {"type": "array"}}
        ]}}}});
        assert_eq!(
            normalise(&doc)["paths"]["/x"]["get"]["parameters"]["query:b"]["explode"],
            false
        );
    }

    #[test]
    fn numbers_compare_numerically() {
        assert_eq!(
            normalise(&json!({"maximum": 200.0})),
            json!({"maximum": 200})
        );
        assert_eq!(normalise(&json!({"maximum": 0.5})), json!({"maximum": 0.5}));
    }

    #[test]
    fn charset_parameters_on_media_types_are_ignored() {
        let doc = json!({"content": {"application/json; charset=utf-8": {"schema": {}}}});
        assert_eq!(
            normalise(&doc),
            json!({"content": {"application/json": {"schema": {}}}})
        );
    }

    #[test]
    fn descriptions_are_compared_trimmed() {
        let a = json!({"description": "  One line.\n  Two lines.  \n"});
        let b = json!({"description": "One line.\nTwo lines."});
        assert_eq!(normalise(&a), normalise(&b));
    }

    #[test]
    fn descriptions_with_different_words_still_differ() {
        let a = json!({"description": "One line."});
        let b = json!({"description": "One word."});
        assert_ne!(normalise(&a), normalise(&b));
    }

    #[test]
    fn patch_versions_of_openapi_are_equal() {
        assert_eq!(
            normalise(&json!({"openapi": "3.0.0"})),
            normalise(&json!({"openapi": "3.0.3"}))
        );
        assert_ne!(
            normalise(&json!({"openapi": "3.0.3"})),
            normalise(&json!({"openapi": "3.1.0"}))
        );
    }

    #[test]
    fn titles_equal_to_component_names_are_dropped() {
        let doc = json!({"components": {"schemas": {"Thread": {"title": "Thread"}, "Other": {"title": "Else"}}}});
        assert_eq!(
            normalise(&doc),
            json!({"components": {"schemas": {"Thread": {}, "Other": {"title": "Else"}}}})
        );
    }

    #[test]
    fn example_date_times_compare_as_instants() {
        let a = json!({"example": {"at": "2023-11-07T05:31:56Z", "nested": ["2023-11-07T06:31:56+01:00"]}});
        let b = json!({"example": {"at": "2023-11-07T05:31:56+00:00", "nested": ["2023-11-07T05:31:56Z"]}});
        assert_eq!(normalise(&a), normalise(&b));
        let later =
            json!({"example": {"at": "2023-11-07T05:31:57Z", "nested": ["2023-11-07T05:31:56Z"]}});
        assert_ne!(normalise(&a), normalise(&later));
    }

    #[test]
    fn required_lists_are_sets() {
        assert_eq!(
            normalise(&json!({"required": ["b", "a"]})),
            json!({"required": ["a", "b"]})
        );
    }
}
