//! Schema comparison: walks an old and a new schema side by side, following `$ref`s into
//! `components/schemas`, and lists every difference as a direction-free [`Change`] at a path
//! (`""` for the schema itself, `thread.subject`, `messages[].id`).

use std::borrow::Borrow;

use openapiv3::{OpenAPI, ReferenceOr, Schema};

use super::resolve;
use super::rules::{Change, Direction};
use super::shape::{Constraint, Shape};

#[derive(Debug)]
pub struct SchemaChange {
    pub change: Change,
    pub path: String,
    pub detail: String,
}

/// Every difference between `old` (in the old spec) and `new` (in the new spec). Properties
/// that are `readOnly` are ignored in inputs, `writeOnly` ones in outputs.
pub fn compare<'a, S: Borrow<Schema>, T: Borrow<Schema>>(
    specs: (&'a OpenAPI, &'a OpenAPI),
    direction: Direction,
    old: &'a ReferenceOr<S>,
    new: &'a ReferenceOr<T>,
) -> anyhow::Result<Vec<SchemaChange>> {
    let mut walk = Walk {
        old: specs.0,
        new: specs.1,
        direction,
        open: Vec::new(),
        changes: Vec::new(),
    };
    walk.node(old, new, "")?;
    Ok(walk.changes)
}

struct Walk<'a> {
    old: &'a OpenAPI,
    new: &'a OpenAPI,
    direction: Direction,
    /// The pairs of schemas being compared further up: meeting one again means the schemas
    /// are recursive, and everything below was or will be compared there.
    open: Vec<(*const Schema, *const Schema)>,
    changes: Vec<SchemaChange>,
}

impl<'a> Walk<'a> {
    fn node<S: Borrow<Schema>, T: Borrow<Schema>>(
        &mut self,
        old: &'a ReferenceOr<S>,
        new: &'a ReferenceOr<T>,
        path: &str,
    ) -> anyhow::Result<()> {
        let (old, _) = resolve::schema(self.old, old)?;
        let (new, _) = resolve::schema(self.new, new)?;
        let pair = (old as *const Schema, new as *const Schema);
        if self.open.contains(&pair) {
            return Ok(());
        }
        self.open.push(pair);
        let result = self.schema(old, new, path);
        self.open.pop();
        result
    }

    fn schema(&mut self, old: &'a Schema, new: &'a Schema, path: &str) -> anyhow::Result<()> {
        let old = Shape::of(self.old, old, 0)?;
        let new = Shape::of(self.new, new, 0)?;
        let (old_type, new_type) = (old.type_name(), new.type_name());
        if old_type != new_type {
            // Everything below a changed type differs too; one line says it.
            self.report(
                Change::TypeChanged,
                path,
                format!("{old_type} -> {new_type}"),
            );
            return Ok(());
        }
        self.format(&old, &new, path);
        self.nullable(&old, &new, path);
        self.enumeration(&old, &new, path);
        self.constraints(&old, &new, path);
        if old.default != new.default {
            let detail = format!("{} -> {}", show(old.default), show(new.default));
            self.report(Change::DefaultChanged, path, detail);
        }
        self.properties(&old, &new, path)?;
        if let (Some(old), Some(new)) = (old.items, new.items) {
            self.node(old, new, &format!("{path}[]"))?;
        }
        if let (Some(old), Some(new)) = (old.additional, new.additional) {
            self.node(old, new, &join(path, "*"))?;
        }
        self.variants(&old, &new, path)
    }

    fn format(&mut self, old: &Shape, new: &Shape, path: &str) {
        if old.format != new.format {
            let name = |format: &Option<String>| format.as_deref().unwrap_or("none").to_owned();
            let detail = format!("{} -> {}", name(&old.format), name(&new.format));
            self.report(Change::FormatChanged, path, detail);
        }
    }

    fn nullable(&mut self, old: &Shape, new: &Shape, path: &str) {
        match (old.nullable, new.nullable) {
            (false, true) => self.report(Change::NullableAdded, path, String::new()),
            (true, false) => self.report(Change::NullableRemoved, path, String::new()),
            _ => {}
        }
    }

    fn enumeration(&mut self, old: &Shape, new: &Shape, path: &str) {
        for value in old
            .enumeration
            .iter()
            .filter(|v| !new.enumeration.contains(v))
        {
            self.report(Change::EnumValueRemoved, path, value.clone());
        }
        for value in new
            .enumeration
            .iter()
            .filter(|v| !old.enumeration.contains(v))
        {
            self.report(Change::EnumValueAdded, path, value.clone());
        }
    }

    fn constraints(&mut self, old: &Shape, new: &Shape, path: &str) {
        let names = old.constraints.iter().chain(&new.constraints).map(|c| c.0);
        let mut seen = Vec::new();
        for name in names {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let (old, new) = (old.constraint(name), new.constraint(name));
            let Some(change) = Constraint::compare(old, new) else {
                continue;
            };
            let text = |c: Option<&Constraint>| c.map_or_else(|| "none".into(), Constraint::text);
            self.report(
                change,
                path,
                format!("{name} {} -> {}", text(old), text(new)),
            );
        }
    }

    fn properties(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str) -> anyhow::Result<()> {
        for &(name, old_property) in &old.properties {
            if self.hidden(self.old, old_property)? {
                continue;
            }
            let at = join(path, name);
            let Some(new_property) = new.property(name) else {
                self.report(Change::PropertyRemoved, &at, String::new());
                continue;
            };
            match (old.requires(name), new.requires(name)) {
                (false, true) => self.report(Change::PropertyMadeRequired, &at, String::new()),
                (true, false) => self.report(Change::PropertyMadeOptional, &at, String::new()),
                _ => {}
            }
            self.node(old_property, new_property, &at)?;
        }
        for &(name, new_property) in &new.properties {
            if old.property(name).is_some() || self.hidden(self.new, new_property)? {
                continue;
            }
            let change = if new.requires(name) {
                Change::PropertyAddedRequired
            } else {
                Change::PropertyAdded
            };
            self.report(change, &join(path, name), String::new());
        }
        Ok(())
    }

    /// Alternatives of a `oneOf`/`anyOf` are matched by position.
    fn variants(&mut self, old: &Shape<'a>, new: &Shape<'a>, path: &str) -> anyhow::Result<()> {
        for (index, (old, new)) in old.variants.iter().zip(&new.variants).enumerate() {
            self.node(*old, *new, &format!("{path}<{index}>"))?;
        }
        let (old_count, new_count) = (old.variants.len(), new.variants.len());
        for index in new_count..old_count {
            self.report(Change::VariantRemoved, path, format!("alternative {index}"));
        }
        for index in old_count..new_count {
            self.report(Change::VariantAdded, path, format!("alternative {index}"));
        }
        Ok(())
    }

    /// A property this direction never carries: `readOnly` in inputs, `writeOnly` in outputs.
    fn hidden(
        &self,
        spec: &'a OpenAPI,
        property: &'a ReferenceOr<Box<Schema>>,
    ) -> anyhow::Result<bool> {
        let (schema, _) = resolve::schema(spec, property)?;
        Ok(match self.direction {
            Direction::Response => schema.schema_data.write_only,
            Direction::Parameter | Direction::Request => schema.schema_data.read_only,
        })
    }

    fn report(&mut self, change: Change, path: &str, detail: String) {
        self.changes.push(SchemaChange {
            change,
            path: path.to_owned(),
            detail,
        });
    }
}

/// `thread` + `subject` -> `thread.subject`; at the root, just `subject`.
fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn show(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "none".into(), serde_json::Value::to_string)
}
