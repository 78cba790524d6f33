//! A small path-based JSON differ: every place where two documents differ, as a readable path
//! (`paths./v1/x.get.parameters.query:limit.schema.maximum`) with both values, short.

use std::fmt;

use serde_json::Value;

/// Longest rendering of one value in a report.
const MAX_VALUE_CHARS: usize = 160;

/// One difference: the value on each side, `None` where the path does not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub path: String,
    pub left: Option<Value>,
    pub right: Option<Value>,
}

/// Every difference between `left` and `right`, in path order.
pub fn diff(left: &Value, right: &Value) -> Vec<Difference> {
    let mut differences = Vec::new();
    diff_at(
        &mut String::new(),
        Some(left),
        Some(right),
        &mut differences,
    );
    differences
}

fn diff_at(
    path: &mut String,
    left: Option<&Value>,
    right: Option<&Value>,
    out: &mut Vec<Difference>,
) {
    match (left, right) {
        (Some(Value::Object(l)), Some(Value::Object(r))) => {
            let mut keys: Vec<&String> = l.keys().chain(r.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                with_segment(path, &object_segment(key), |path| {
                    diff_at(path, l.get(key), r.get(key), out)
                });
            }
        }
        (Some(Value::Array(l)), Some(Value::Array(r))) => {
            for index in 0..l.len().max(r.len()) {
                with_segment(path, &format!("[{index}]"), |path| {
                    diff_at(path, l.get(index), r.get(index), out)
                });
            }
        }
        (l, r) if l == r => {}
        (l, r) => out.push(Difference {
            path: match path.strip_prefix('.').unwrap_or(path) {
                "" => "(root)".to_owned(),
                path => path.to_owned(),
            },
            left: l.cloned(),
            right: r.cloned(),
        }),
    }
}

fn with_segment(path: &mut String, segment: &str, f: impl FnOnce(&mut String)) {
    let len = path.len();
    path.push_str(segment);
    f(path);
    path.truncate(len);
}

/// `.key`, or `["key"]` when the key would be ambiguous in a dotted path.
fn object_segment(key: &str) -> String {
    if key.is_empty() || key.contains(['.', '[', ']', ' ', '"']) {
        format!("[{key:?}]")
    } else {
        format!(".{key}")
    }
}

impl Difference {
    fn render(value: Option<&Value>) -> String {
        let Some(value) = value else {
            return "<absent>".to_owned();
        };
        let text = value.to_string();
        if text.chars().count() <= MAX_VALUE_CHARS {
            return text;
        }
        let short: String = text.chars().take(MAX_VALUE_CHARS).collect();
        format!("{short}… ({} chars)", text.chars().count())
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path)?;
        writeln!(f, "    left:  {}", Self::render(self.left.as_ref()))?;
        write!(f, "    right: {}", Self::render(self.right.as_ref()))
    }
}

/// A report of `differences` with the sides named, e.g. `spec` and `served`.
pub fn report(differences: &[Difference], left_name: &str, right_name: &str) -> String {
    let mut text = format!(
        "{} difference(s); left = {left_name}, right = {right_name}\n",
        differences.len()
    );
    for difference in differences {
        text.push_str(&difference.to_string());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn equal_documents_have_no_differences() {
        let doc = json!({"a": [1, {"b": "c"}]});
        assert!(diff(&doc, &doc).is_empty());
    }

    #[test]
    fn changed_values_are_reported_with_their_path() {
        let left = json!({"paths": {"/x": {"get": {"type": "string"}}}});
        let right = json!({"paths": {"/x": {"get": {"type": "integer"}}}});
        assert_eq!(
            diff(&left, &right),
            vec![Difference {
                path: "paths./x.get.type".to_owned(),
                left: Some(json!("string")),
                right: Some(json!("integer")),
            }]
        );
    }

    #[test]
    fn missing_keys_and_extra_items_are_reported() {
        let left = json!({"a": 1, "list": [1]});
        let right = json!({"b": 2, "list": [1, 2]});
        let paths: Vec<String> = diff(&left, &right).into_iter().map(|d| d.path).collect();
        assert_eq!(paths, vec!["a", "b", "list[1]"]);
    }

    #[test]
    fn reports_are_short() {
        let left = json!({"big": "x".repeat(10_000)});
        let text = report(&diff(&left, &json!({})), "spec", "served");
        assert!(text.len() < 500, "{text}");
        assert!(text.contains("big"));
        assert!(text.contains("<absent>"));
    }

    #[test]
    fn dotted_keys_are_quoted() {
        let left = json!({"a.b": 1});
        assert_eq!(diff(&left, &json!({}))[0].path, "[\"a.b\"]");
    }
}
