//! Operations: matched by method and path, then their parameters, request bodies and
//! responses compared.

use anyhow::{Context, anyhow};
use openapiv3::{
    Content, OpenAPI, Operation, Parameter, ParameterSchemaOrContent, ReferenceOr, RequestBody,
    Response, Responses, Schema,
};

use super::rules::{Direction, Rule};
use super::{Diff, resolve};

/// One operation with its effective parameters (the path item's, overridden by its own).
struct Op<'a> {
    method: String,
    path: &'a str,
    operation: &'a Operation,
    parameters: Vec<&'a Parameter>,
}

impl Op<'_> {
    fn location(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn id(&self) -> &str {
        self.operation.operation_id.as_deref().unwrap_or("")
    }

    /// `/threads/{id}` and `/threads/{thread_id}` are the same URL.
    fn same_endpoint(&self, other: &Op) -> bool {
        self.method == other.method && template(self.path) == template(other.path)
    }
}

/// The path with its parameter names blanked: `/threads/{id}` -> `/threads/{}`.
fn template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_name = false;
    for ch in path.chars() {
        match ch {
            '{' => in_name = true,
            '}' => {
                in_name = false;
                out.push_str("{}");
            }
            _ if !in_name => out.push(ch),
            _ => {}
        }
    }
    out
}

fn operations(spec: &OpenAPI) -> anyhow::Result<Vec<Op<'_>>> {
    let mut ops = Vec::new();
    for (path, item) in spec.paths.iter() {
        let item = item
            .as_item()
            .ok_or_else(|| anyhow!("path {path} is a $ref, which is not supported"))?;
        for (method, operation) in item.iter() {
            let mut parameters: Vec<&Parameter> = Vec::new();
            for parameter in item.parameters.iter().chain(&operation.parameters) {
                let parameter = resolve::parameter(spec, parameter)?;
                parameters.retain(|p| !same_parameter(p, parameter));
                parameters.push(parameter);
            }
            ops.push(Op {
                method: method.to_uppercase(),
                path,
                operation,
                parameters,
            });
        }
    }
    Ok(ops)
}

/// `query`, `header`, `path` or `cookie`.
fn place(parameter: &Parameter) -> &'static str {
    match parameter {
        Parameter::Query { .. } => "query",
        Parameter::Header { .. } => "header",
        Parameter::Path { .. } => "path",
        Parameter::Cookie { .. } => "cookie",
    }
}

fn name(parameter: &Parameter) -> &str {
    &parameter.parameter_data_ref().name
}

/// Same `in` and name; header names are case-insensitive.
fn same_parameter(a: &Parameter, b: &Parameter) -> bool {
    place(a) == place(b)
        && match a {
            Parameter::Header { .. } => name(a).eq_ignore_ascii_case(name(b)),
            _ => name(a) == name(b),
        }
}

fn parameter_schema(parameter: &Parameter) -> Option<&ReferenceOr<Schema>> {
    match &parameter.parameter_data_ref().format {
        ParameterSchemaOrContent::Schema(schema) => Some(schema),
        ParameterSchemaOrContent::Content(content) => content.values().next()?.schema.as_ref(),
    }
}

fn statuses(responses: &Responses) -> Vec<(String, &ReferenceOr<Response>)> {
    let codes = responses.responses.iter();
    let codes = codes.map(|(code, response)| (code.to_string(), response));
    let default = responses.default.iter().map(|r| ("default".to_owned(), r));
    codes.chain(default).collect()
}

fn is_success(status: &str) -> bool {
    status.starts_with('2')
}

impl<'a> Diff<'a> {
    pub(super) fn operations(&mut self) -> anyhow::Result<()> {
        let old_ops = operations(self.old)?;
        let new_ops = operations(self.new)?;
        for old in &old_ops {
            match new_ops.iter().find(|new| new.same_endpoint(old)) {
                Some(new) => self
                    .operation(old, new)
                    .with_context(|| format!("comparing {}", new.location()))?,
                None => self.report(Rule::OperationRemoved, old.location(), old.id()),
            }
        }
        for new in &new_ops {
            if !old_ops.iter().any(|old| old.same_endpoint(new)) {
                self.report(Rule::OperationAdded, new.location(), new.id());
            }
        }
        Ok(())
    }

    fn operation(&mut self, old: &Op<'a>, new: &Op<'a>) -> anyhow::Result<()> {
        let at = new.location();
        if old.id() != new.id() {
            let detail = format!("{} -> {}", old.id(), new.id());
            self.report(Rule::OperationIdChanged, &at, detail);
        }
        let (old_op, new_op) = (old.operation, new.operation);
        if !old_op.deprecated && new_op.deprecated {
            self.report(Rule::OperationDeprecated, &at, "");
        }
        if old_op.summary != new_op.summary {
            self.report(Rule::DocsChanged, &at, "summary");
        }
        if old_op.description != new_op.description {
            self.report(Rule::DocsChanged, &at, "description");
        }
        self.parameters(&at, &old.parameters, &new.parameters)?;
        self.request_body(
            &at,
            old_op.request_body.as_ref(),
            new_op.request_body.as_ref(),
        )?;
        self.responses(&at, &old_op.responses, &new_op.responses)?;
        self.operation_security(&at, old_op, new_op);
        Ok(())
    }

    fn parameters(
        &mut self,
        at: &str,
        old: &[&'a Parameter],
        new: &[&'a Parameter],
    ) -> anyhow::Result<()> {
        for &old_parameter in old {
            let location = format!("{at} {} {}", place(old_parameter), name(old_parameter));
            if let Some(new_parameter) = new.iter().find(|p| same_parameter(p, old_parameter)) {
                self.parameter(&location, old_parameter, new_parameter)?;
            } else if let Some(moved) = new.iter().find(|p| name(p) == name(old_parameter)) {
                let detail = format!("{} -> {}", place(old_parameter), place(moved));
                self.report(Rule::ParameterMoved, location, detail);
            } else {
                self.report(Rule::ParameterRemoved, location, "");
            }
        }
        for &new_parameter in new {
            let known =
                |p: &&Parameter| same_parameter(p, new_parameter) || name(p) == name(new_parameter);
            if old.iter().any(known) {
                continue;
            }
            let rule = if new_parameter.parameter_data_ref().required {
                Rule::ParameterAddedRequired
            } else {
                Rule::ParameterAdded
            };
            let location = format!("{at} {} {}", place(new_parameter), name(new_parameter));
            self.report(rule, location, "");
        }
        Ok(())
    }

    fn parameter(
        &mut self,
        at: &str,
        old: &'a Parameter,
        new: &'a Parameter,
    ) -> anyhow::Result<()> {
        let (old_data, new_data) = (old.parameter_data_ref(), new.parameter_data_ref());
        match (old_data.required, new_data.required) {
            (false, true) => self.report(Rule::ParameterMadeRequired, at, ""),
            (true, false) => self.report(Rule::ParameterMadeOptional, at, ""),
            _ => {}
        }
        if old_data.description != new_data.description {
            self.report(Rule::DocsChanged, at, "description");
        }
        if let (Some(old), Some(new)) = (parameter_schema(old), parameter_schema(new)) {
            self.schema(Direction::Parameter, at, old, new)?;
        }
        Ok(())
    }

    fn request_body(
        &mut self,
        at: &str,
        old: Option<&'a ReferenceOr<RequestBody>>,
        new: Option<&'a ReferenceOr<RequestBody>>,
    ) -> anyhow::Result<()> {
        let old = old
            .map(|body| resolve::request_body(self.old, body))
            .transpose()?;
        let new = new
            .map(|body| resolve::request_body(self.new, body))
            .transpose()?;
        let at = format!("{at} body");
        match (old, new) {
            (None, None) => {}
            (Some(_), None) => self.report(Rule::RequestBodyRemoved, at, ""),
            (None, Some(new)) if new.required => {
                self.report(Rule::RequestBodyAddedRequired, at, "")
            }
            (None, Some(_)) => self.report(Rule::RequestBodyAdded, at, ""),
            (Some(old), Some(new)) => {
                match (old.required, new.required) {
                    (false, true) => self.report(Rule::RequestBodyMadeRequired, &at, ""),
                    (true, false) => self.report(Rule::RequestBodyMadeOptional, &at, ""),
                    _ => {}
                }
                self.content(Direction::Request, &at, &old.content, &new.content)?;
            }
        }
        Ok(())
    }

    /// Statuses are matched by code. A success status that disappeared while another appeared
    /// was changed (`200 -> 201`), and the two responses are compared.
    fn responses(
        &mut self,
        at: &str,
        old: &'a Responses,
        new: &'a Responses,
    ) -> anyhow::Result<()> {
        let (old, new) = (statuses(old), statuses(new));
        let mut gone = Vec::new();
        for (status, old_response) in &old {
            match new.iter().find(|(s, _)| s == status) {
                Some((_, new_response)) => {
                    self.response(&format!("{at} {status}"), old_response, new_response)?;
                }
                None => gone.push((status, *old_response)),
            }
        }
        let added = new
            .iter()
            .filter(|(status, _)| !old.iter().any(|(s, _)| s == status));
        let (added_success, added_other): (Vec<_>, Vec<_>) =
            added.partition(|(status, _)| is_success(status));
        let mut replacements = added_success.into_iter();
        for (status, old_response) in gone {
            if !is_success(status) {
                self.report(Rule::ErrorStatusRemoved, format!("{at} {status}"), "");
            } else if let Some((new_status, new_response)) = replacements.next() {
                let detail = format!("{status} -> {new_status}");
                self.report(Rule::SuccessStatusChanged, at, detail);
                self.response(&format!("{at} {new_status}"), old_response, new_response)?;
            } else {
                self.report(Rule::SuccessStatusRemoved, format!("{at} {status}"), "");
            }
        }
        for (status, _) in replacements.chain(added_other) {
            self.report(Rule::ResponseStatusAdded, format!("{at} {status}"), "");
        }
        Ok(())
    }

    fn response(
        &mut self,
        at: &str,
        old: &'a ReferenceOr<Response>,
        new: &'a ReferenceOr<Response>,
    ) -> anyhow::Result<()> {
        let old = resolve::response(self.old, old)?;
        let new = resolve::response(self.new, new)?;
        for header in old.headers.keys() {
            if !new.headers.keys().any(|h| h.eq_ignore_ascii_case(header)) {
                self.report(Rule::ResponseHeaderRemoved, at, header);
            }
        }
        self.content(Direction::Response, at, &old.content, &new.content)
    }

    /// The schemas of the media types both sides have; a media type gone is breaking.
    fn content(
        &mut self,
        direction: Direction,
        at: &str,
        old: &'a Content,
        new: &'a Content,
    ) -> anyhow::Result<()> {
        for (media_type, old_media) in old {
            let Some(new_media) = new.get(media_type) else {
                let rule = match direction {
                    Direction::Response => Rule::ResponseMediaTypeRemoved,
                    Direction::Parameter | Direction::Request => Rule::RequestMediaTypeRemoved,
                };
                self.report(rule, at, media_type);
                continue;
            };
            if let (Some(old), Some(new)) = (&old_media.schema, &new_media.schema) {
                self.schema(direction, at, old, new)?;
            }
        }
        Ok(())
    }
}
