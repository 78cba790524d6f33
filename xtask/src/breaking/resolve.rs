//! `$ref` resolution into a spec's `components`.

use std::borrow::Borrow;

use anyhow::{anyhow, bail};
use openapiv3::{OpenAPI, Parameter, ReferenceOr, RequestBody, Response, Schema};

/// How many bare `$ref`s in a row are followed before giving up (a component may itself be a
/// `$ref` to another).
const MAX_CHAIN: usize = 16;

/// A schema, and the name of the component it came from when it was a `$ref`.
pub fn schema<'a, S: Borrow<Schema>>(
    spec: &'a OpenAPI,
    item: &'a ReferenceOr<S>,
) -> anyhow::Result<(&'a Schema, Option<&'a str>)> {
    resolve(item, "#/components/schemas/", |name| {
        spec.components.as_ref()?.schemas.get(name)
    })
}

pub fn parameter<'a>(
    spec: &'a OpenAPI,
    item: &'a ReferenceOr<Parameter>,
) -> anyhow::Result<&'a Parameter> {
    let (parameter, _) = resolve(item, "#/components/parameters/", |name| {
        spec.components.as_ref()?.parameters.get(name)
    })?;
    Ok(parameter)
}

pub fn request_body<'a>(
    spec: &'a OpenAPI,
    item: &'a ReferenceOr<RequestBody>,
) -> anyhow::Result<&'a RequestBody> {
    let (body, _) = resolve(item, "#/components/requestBodies/", |name| {
        spec.components.as_ref()?.request_bodies.get(name)
    })?;
    Ok(body)
}

pub fn response<'a>(
    spec: &'a OpenAPI,
    item: &'a ReferenceOr<Response>,
) -> anyhow::Result<&'a Response> {
    let (response, _) = resolve(item, "#/components/responses/", |name| {
        spec.components.as_ref()?.responses.get(name)
    })?;
    Ok(response)
}

/// Follows `item` (and any chain of bare `$ref`s) into the components under `prefix`, which
/// `lookup` reads by name. `S` is `T` or `Box<T>` (openapiv3 boxes nested schemas).
fn resolve<'a, T, S: Borrow<T>>(
    item: &'a ReferenceOr<S>,
    prefix: &str,
    lookup: impl Fn(&str) -> Option<&'a ReferenceOr<T>>,
) -> anyhow::Result<(&'a T, Option<&'a str>)> {
    let mut reference = match item {
        ReferenceOr::Item(item) => return Ok((item.borrow(), None)),
        ReferenceOr::Reference { reference } => reference,
    };
    for _ in 0..MAX_CHAIN {
        let name = reference
            .strip_prefix(prefix)
            .ok_or_else(|| anyhow!("unsupported $ref {reference}: expected {prefix}<name>"))?;
        match lookup(name) {
            Some(ReferenceOr::Item(item)) => return Ok((item, Some(name))),
            Some(ReferenceOr::Reference { reference: next }) => reference = next,
            None => bail!("$ref {reference} points at nothing"),
        }
    }
    bail!("$ref {reference}: more than {MAX_CHAIN} $refs in a row (a cycle?)")
}
