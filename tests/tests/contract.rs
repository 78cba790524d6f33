//! Contract tests: the schema the running server generates from the code equals the checked-in
//! spec (semantically), an altered spec is caught, the documents and Swagger UI are served, and
//! the generated crates are up to date with the spec.

use std::path::{Path, PathBuf};

use messaging_tests::{
    TestApp,
    json_diff::{Difference, diff, report},
    openapi_normal_form::normalise,
    spawn_app,
};
use reqwest::{StatusCode, header::CONTENT_TYPE};
use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn spec_text() -> String {
    std::fs::read_to_string(workspace_root().join("openapi/messaging.yaml"))
        .expect("the spec is readable")
}

fn spec_json() -> Value {
    serde_yaml::from_str(&spec_text()).expect("the spec is valid YAML")
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.http()
        .get(app.url(path))
        .send()
        .await
        .expect("the server answers")
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_served_yaml_is_the_checked_in_spec_byte_for_byte() {
    let app = spawn_app().await;
    let response = get(&app, "/openapi.yaml").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        content_type(&response).starts_with("application/yaml"),
        "{}",
        content_type(&response)
    );
    assert_eq!(response.text().await.unwrap(), spec_text());
}

#[tokio::test]
async fn the_schema_generated_from_the_code_matches_the_spec() {
    let app = spawn_app().await;
    let response = get(&app, "/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        content_type(&response).starts_with("application/json"),
        "{}",
        content_type(&response)
    );
    let served: Value = response.json().await.expect("/openapi.json is JSON");

    let differences = diff(&normalise(&spec_json()), &normalise(&served));
    assert!(
        differences.is_empty(),
        "the served schema differs from openapi/messaging.yaml:\n{}",
        report(&differences, "openapi/messaging.yaml", "/openapi.json")
    );
}

/// Applies `alter` to a copy of the spec and returns what the differ reports against the spec.
fn differences_after(alter: impl FnOnce(&mut Value)) -> Vec<Difference> {
    let spec = spec_json();
    let mut altered = spec.clone();
    alter(&mut altered);
    diff(&normalise(&spec), &normalise(&altered))
}

#[test]
fn a_changed_property_type_is_caught() {
    let differences = differences_after(|spec| {
        spec["components"]["schemas"]["Message"]["properties"]["is_edited"]["type"] =
            json!("string");
    });
    assert_eq!(
        differences,
        vec![Difference {
            path: "components.schemas.Message.properties.is_edited.type".to_owned(),
            left: Some(json!("boolean")),
            right: Some(json!("string")),
        }]
    );
}

#[test]
fn a_removed_operation_is_caught() {
    let mut removed = None;
    let differences = differences_after(|spec| {
        removed = spec["paths"]["/v1/messaging/messages/{id}"]
            .as_object_mut()
            .unwrap()
            .remove("delete");
    });
    assert!(removed.is_some(), "the spec has deleteMessage");
    assert_eq!(
        differences.len(),
        1,
        "{}",
        report(&differences, "spec", "altered")
    );
    assert_eq!(
        differences[0].path,
        "paths./v1/messaging/messages/{id}.delete"
    );
    assert_eq!(
        differences[0].left.as_ref().unwrap()["operationId"],
        "deleteMessage"
    );
    assert_eq!(differences[0].right, None);
}

#[test]
fn an_added_enum_value_is_caught() {
    let differences = differences_after(|spec| {
        let values = spec["components"]["schemas"]["ThreadStatus"]["enum"]
            .as_array_mut()
            .unwrap();
        values.push(json!("snoozed"));
    });
    assert_eq!(
        differences.len(),
        1,
        "{}",
        report(&differences, "spec", "altered")
    );
    assert!(
        differences[0]
            .path
            .starts_with("components.schemas.ThreadStatus.enum[")
    );
    assert_eq!(differences[0].left, None);
    assert_eq!(differences[0].right, Some(json!("snoozed")));
}

#[test]
fn a_changed_parameter_limit_behind_a_ref_is_caught() {
    let differences = differences_after(|spec| {
        spec["components"]["parameters"]["XAuthToken"]["schema"]["maxLength"] = json!(10);
    });
    // The parameter is inlined into every operation that uses it; each one reports it.
    assert!(!differences.is_empty());
    assert!(differences.iter().all(|d| {
        d.path
            .ends_with("parameters.header:x-auth-token.schema.maxLength")
    }));
    assert!(differences.iter().all(|d| d.right == Some(json!(10))));
}

#[tokio::test]
async fn swagger_ui_and_its_assets_load() {
    let app = spawn_app().await;
    let page = get(&app, "/docs/").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        content_type(&page).starts_with("text/html"),
        "{}",
        content_type(&page)
    );
    let html = page.text().await.unwrap();
    assert!(
        html.to_lowercase().contains("swagger"),
        "the page is Swagger UI"
    );

    let scripts = script_sources(&html);
    assert!(!scripts.is_empty(), "the page loads scripts");
    for script in scripts {
        let asset = get(&app, &format!("/docs/{}", script.trim_start_matches("./"))).await;
        assert_eq!(asset.status(), StatusCode::OK, "{script}");
        assert!(
            content_type(&asset).contains("javascript"),
            "{script}: {}",
            content_type(&asset)
        );
    }

    let initializer = get(&app, "/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        initializer.contains("/openapi.yaml"),
        "Swagger UI shows the checked-in spec"
    );
}

/// The `src` of every `<script>` of a page.
fn script_sources(html: &str) -> Vec<String> {
    html.split("<script")
        .skip(1)
        .filter_map(|tag| tag.split_once("src=\"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(src, _)| src.to_owned()))
        .collect()
}

#[tokio::test]
async fn docs_without_a_slash_redirect_to_swagger_ui() {
    let app = spawn_app().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects.get(app.url("/docs")).send().await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(response.headers()["location"], "/docs/");
}

#[tokio::test]
async fn the_spec_is_also_served_as_json() {
    let app = spawn_app().await;
    let response = get(&app, "/openapi/spec.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(content_type(&response).starts_with("application/json"));
    assert_eq!(response.json::<Value>().await.unwrap(), spec_json());
}

#[tokio::test]
async fn health_is_ok_while_the_database_answers() {
    let app = spawn_app().await;
    let response = get(&app, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

#[test]
fn generated_crates_are_up_to_date_with_the_spec() {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["xtask", "codegen", "--check"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "`cargo xtask codegen --check` failed; run `cargo xtask codegen`.\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Resolves a `$ref` into `spec` (`#/components/...`), or returns the value itself.
fn resolved<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => resolved(
            spec,
            spec.pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{pointer} resolves")),
        ),
        None => value,
    }
}

/// The operations of the spec by `operationId`.
fn operations(spec: &Value) -> std::collections::BTreeMap<String, &Value> {
    let mut out = std::collections::BTreeMap::new();
    for item in spec["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("a path item").values() {
            if let Some(id) = operation.get("operationId").and_then(Value::as_str) {
                out.insert(id.to_owned(), operation);
            }
        }
    }
    out
}

/// The names of an operation's parameters in `location` (`path`, `query`, …).
fn parameter_names(spec: &Value, operation: &Value, location: &str) -> Vec<String> {
    operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|parameter| resolved(spec, parameter))
        .filter(|parameter| parameter["in"] == location)
        .map(|parameter| parameter["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// Whether `pointer` (`/thread/id`, `/threads/0/id`) names a property the schema declares.
fn schema_has_pointer(spec: &Value, schema: &Value, pointer: &str) -> bool {
    let mut schema = resolved(spec, schema);
    for segment in pointer.split('/').skip(1) {
        schema = if segment.parse::<usize>().is_ok() {
            match schema.get("items") {
                Some(items) => resolved(spec, items),
                None => return false,
            }
        } else {
            match schema.get("properties").and_then(|p| p.get(segment)) {
                Some(property) => resolved(spec, property),
                None => return false,
            }
        };
    }
    true
}

/// Checks one runtime expression of a link on `source`'s `response`.
fn expression_resolves(spec: &Value, source: &Value, response: &Value, expression: &str) -> bool {
    if let Some(name) = expression.strip_prefix("$request.path.") {
        return parameter_names(spec, source, "path")
            .iter()
            .any(|n| n == name);
    }
    let Some(pointer) = expression.strip_prefix("$response.body#") else {
        return false;
    };
    let schema = &response["content"]["application/json"]["schema"];
    schema_has_pointer(spec, schema, pointer)
}

#[test]
fn every_link_names_a_real_operation_parameters_and_response_members() {
    let spec = spec_json();
    let operations = operations(&spec);
    let mut links = 0;
    for (source_id, source) in &operations {
        for (status, response) in source["responses"].as_object().expect("responses") {
            let response = resolved(&spec, response);
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                links += 1;
                let at = format!("{source_id} {status} link {name}");
                let target_id = link["operationId"]
                    .as_str()
                    .expect("links name operationId");
                let target = operations
                    .get(target_id)
                    .unwrap_or_else(|| panic!("{at}: no operation {target_id}"));
                for (parameter, expression) in link["parameters"].as_object().into_iter().flatten()
                {
                    let known = ["path", "query", "header"].iter().any(|location| {
                        parameter_names(&spec, target, location).contains(parameter)
                    });
                    assert!(known, "{at}: {target_id} has no parameter {parameter}");
                    let expression = expression.as_str().expect("an expression");
                    assert!(
                        expression_resolves(&spec, source, response, expression),
                        "{at}: {expression} does not resolve"
                    );
                }
                if let Some(body) = link.get("requestBody").and_then(Value::as_object) {
                    let schema = &resolved(&spec, &target["requestBody"])["content"]["application/json"]
                        ["schema"];
                    for (member, expression) in body {
                        assert!(
                            schema_has_pointer(&spec, schema, &format!("/{member}")),
                            "{at}: {target_id}'s body has no member {member}"
                        );
                        let expression = expression.as_str().expect("an expression");
                        assert!(
                            expression_resolves(&spec, source, response, expression),
                            "{at}: {expression} does not resolve"
                        );
                    }
                }
            }
        }
    }
    assert!(links >= 20, "the spec's links were found ({links})");
}
