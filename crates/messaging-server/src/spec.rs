//! The checked-in OpenAPI document, embedded at build time: its text, its JSON form, its `info`
//! and the names of the path parameters of each path (poem-openapi only knows them as `paramN`).

use std::sync::LazyLock;

use serde_json::Value;

/// `openapi/messaging.yaml`, byte for byte.
pub const SPEC_YAML: &str = include_str!("../../../openapi/messaging.yaml");

/// The parsed spec. Parsing happens once; a spec that does not parse is a build defect that the
/// contract tests catch, so it panics with the reason.
pub(crate) static SPEC: LazyLock<Spec> = LazyLock::new(|| Spec::parse(SPEC_YAML));

/// What the server needs to know about its own spec.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The whole document as JSON.
    pub(crate) json: Value,
    /// `info.title`, `info.version` and `info.description`.
    pub(crate) info: SpecInfo,
    /// Every path template, with its path parameters in the order they appear.
    pub(crate) paths: Vec<PathTemplate>,
}

/// `info` of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpecInfo {
    pub(crate) title: String,
    pub(crate) version: String,
    pub(crate) description: Option<String>,
}

/// A path of the spec such as `/v1/messaging/threads/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(PathParam),
}

/// A path parameter as the spec names and types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathParam {
    pub(crate) name: String,
    /// `schema.format` (e.g. `uuid`), else `schema.type`, when the spec gives one.
    pub(crate) format: Option<String>,
}

impl Spec {
    fn parse(text: &str) -> Self {
        let json: Value = serde_yaml::from_str(text).expect("openapi/messaging.yaml is valid YAML");
        let info = SpecInfo::from_spec(&json);
        let paths = path_templates(&json);
        Self { json, info, paths }
    }

    /// The parameters of the spec path that `request_path` matches, in path order.
    pub(crate) fn path_params_of(&self, request_path: &str) -> Option<Vec<&PathParam>> {
        self.paths
            .iter()
            .find_map(|template| template.match_params(request_path))
    }
}

impl SpecInfo {
    fn from_spec(spec: &Value) -> Self {
        let text = |key: &str| spec["info"][key].as_str().map(str::to_owned);
        Self {
            title: text("title").expect("openapi/messaging.yaml has info.title"),
            version: text("version").expect("openapi/messaging.yaml has info.version"),
            description: text("description"),
        }
    }
}

impl PathTemplate {
    fn parse(template: &str, operations: &Value, components: &Value) -> Self {
        let segments = template
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(PathParam {
                        name: name.to_owned(),
                        format: path_param_format(name, operations, components),
                    }),
                    None => Segment::Literal(segment.to_owned()),
                },
            )
            .collect();
        Self { segments }
    }

    /// The parameters bound by `request_path` when it matches this template.
    fn match_params(&self, request_path: &str) -> Option<Vec<&PathParam>> {
        let parts: Vec<&str> = request_path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal != part => return None,
                Segment::Literal(_) => {}
                Segment::Param(param) => params.push(param),
            }
        }
        Some(params)
    }
}

fn path_templates(spec: &Value) -> Vec<PathTemplate> {
    let Some(paths) = spec["paths"].as_object() else {
        return Vec::new();
    };
    let mut templates: Vec<PathTemplate> = paths
        .iter()
        .map(|(template, operations)| {
            PathTemplate::parse(template, operations, &spec["components"])
        })
        .collect();
    // Literal segments win over parameters, as in the router: try the most literal paths first.
    templates.sort_by_key(|t| {
        t.segments
            .iter()
            .filter(|s| matches!(s, Segment::Param(_)))
            .count()
    });
    templates
}

/// The format (or type) the spec gives the path parameter `name` in any operation of a path.
fn path_param_format(name: &str, operations: &Value, components: &Value) -> Option<String> {
    let operations = operations.as_object()?;
    operations
        .values()
        .filter_map(|operation| operation["parameters"].as_array())
        .flatten()
        .map(|parameter| resolve_parameter(parameter, components))
        .find(|parameter| parameter["in"] == "path" && parameter["name"] == name)
        .and_then(|parameter| {
            let schema = &parameter["schema"];
            schema["format"]
                .as_str()
                .or_else(|| schema["type"].as_str())
                .map(str::to_owned)
        })
}

fn resolve_parameter<'a>(parameter: &'a Value, components: &'a Value) -> &'a Value {
    match parameter["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/parameters/"))
    {
        Some(name) => &components["parameters"][name],
        None => parameter,
    }
}

/// The checked-in spec as pretty JSON.
pub(crate) static SPEC_JSON: LazyLock<String> = LazyLock::new(|| {
    serde_json::to_string_pretty(&SPEC.json).expect("a JSON value always serializes")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_comes_from_the_spec() {
        assert_eq!(SPEC.info.title, "Tybrite Messaging API");
        assert!(!SPEC.info.version.is_empty());
        assert!(
            SPEC.info
                .description
                .as_deref()
                .is_some_and(|d| d.contains("Authentication"))
        );
    }

    #[test]
    fn path_parameters_are_named_as_in_the_spec() {
        let params = SPEC
            .path_params_of("/v1/messaging/messages/not-a-uuid/reactions/x")
            .unwrap();
        assert_eq!(params.len(), 2);
        assert_eq!(params[0].name, "id");
        assert_eq!(params[0].format.as_deref(), Some("uuid"));
        assert_eq!(params[1].name, "emoji");
    }

    #[test]
    fn literal_paths_bind_no_parameters() {
        assert_eq!(
            SPEC.path_params_of("/v1/messaging/threads").unwrap().len(),
            0
        );
        assert!(SPEC.path_params_of("/nowhere/at/all/really").is_none());
    }
}
