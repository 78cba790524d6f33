//! The view of a schema the comparison works on: its type, format, enum, constraints,
//! properties and children, whatever shape openapiv3 parsed it into (`type: string`, `allOf`,
//! or the catch-all `AnySchema`).

use anyhow::bail;
use openapiv3::{
    AdditionalProperties, AnySchema, ArrayType, ObjectType, OpenAPI, ReferenceOr, Schema,
    SchemaKind, StringType, Type,
};

use super::resolve;
use super::rules::Change;

/// How deeply `allOf`s may nest before the schema is rejected as cyclic.
const MAX_ALL_OF_DEPTH: usize = 32;

/// What the comparison reads from one schema (`allOf` members merged into one).
#[derive(Default)]
pub struct Shape<'a> {
    /// `string`, `object`, …; `oneOf`/`anyOf` for alternatives; none for "anything".
    pub type_name: Option<&'a str>,
    pub format: Option<String>,
    pub nullable: bool,
    /// The allowed values as JSON text (`"archived"`, `3`, `null`).
    pub enumeration: Vec<String>,
    pub constraints: Vec<(&'static str, Constraint<'a>)>,
    pub default: Option<&'a serde_json::Value>,
    pub properties: Vec<(&'a str, &'a ReferenceOr<Box<Schema>>)>,
    pub required: Vec<&'a str>,
    pub items: Option<&'a ReferenceOr<Box<Schema>>>,
    pub additional: Option<&'a ReferenceOr<Schema>>,
    pub variants: Vec<&'a ReferenceOr<Schema>>,
}

impl<'a> Shape<'a> {
    pub fn of(spec: &'a OpenAPI, schema: &'a Schema, depth: usize) -> anyhow::Result<Self> {
        if depth > MAX_ALL_OF_DEPTH {
            bail!("allOf nested more than {MAX_ALL_OF_DEPTH} deep (a cycle?)");
        }
        let data = &schema.schema_data;
        let mut shape = Shape {
            nullable: data.nullable,
            default: data.default.as_ref(),
            ..Shape::default()
        };
        match &schema.schema_kind {
            SchemaKind::Type(typed) => shape.read_type(typed),
            SchemaKind::OneOf { one_of } => shape.alternatives("oneOf", one_of),
            SchemaKind::AnyOf { any_of } => shape.alternatives("anyOf", any_of),
            SchemaKind::AllOf { all_of } => shape.merge_all(spec, all_of, depth)?,
            SchemaKind::Any(any) => shape.read_any(spec, any, depth)?,
            SchemaKind::Not { .. } => shape.type_name = Some("not"),
        }
        Ok(shape)
    }

    /// `string`, `string enum`, `any`: a change here changes the generated type.
    pub fn type_name(&self) -> String {
        let name = self.type_name.unwrap_or("any");
        if self.enumeration.is_empty() {
            name.to_owned()
        } else {
            format!("{name} enum")
        }
    }

    pub fn property(&self, name: &str) -> Option<&'a ReferenceOr<Box<Schema>>> {
        self.properties
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
    }

    pub fn requires(&self, name: &str) -> bool {
        self.required.contains(&name)
    }

    pub fn constraint(&self, name: &str) -> Option<&Constraint<'a>> {
        self.constraints
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
    }

    fn limit(
        &mut self,
        name: &'static str,
        value: Option<f64>,
        constraint: fn(f64) -> Constraint<'a>,
    ) {
        if let Some(value) = value {
            self.constraints.push((name, constraint(value)));
        }
    }

    fn flag(&mut self, name: &'static str, set: bool, text: &'static str) {
        if set {
            self.constraints.push((name, Constraint::Flag(text)));
        }
    }

    /// A `min…`/`max…` pair of counts: lengths, items or properties.
    fn counts(&mut self, names: [&'static str; 2], min: Option<usize>, max: Option<usize>) {
        self.limit(names[0], min.map(|v| v as f64), Constraint::Min);
        self.limit(names[1], max.map(|v| v as f64), Constraint::Max);
    }

    /// The keywords of a string: lengths and pattern.
    fn text(&mut self, min: Option<usize>, max: Option<usize>, pattern: Option<&'a String>) {
        self.counts(["minLength", "maxLength"], min, max);
        if let Some(pattern) = pattern {
            self.constraints
                .push(("pattern", Constraint::Pattern(pattern)));
        }
    }

    /// The keywords of an object: properties, which are required, what else is allowed, and
    /// how many.
    fn members(
        &mut self,
        properties: impl IntoIterator<Item = (&'a String, &'a ReferenceOr<Box<Schema>>)>,
        required: &'a [String],
        additional: Option<&'a AdditionalProperties>,
        counts: [Option<usize>; 2],
    ) {
        self.properties = properties
            .into_iter()
            .map(|(n, p)| (n.as_str(), p))
            .collect();
        self.required = required.iter().map(String::as_str).collect();
        self.additional_properties(additional);
        self.counts(["minProperties", "maxProperties"], counts[0], counts[1]);
    }

    fn read_type(&mut self, typed: &'a Type) {
        match typed {
            Type::String(string) => self.read_string(string),
            Type::Number(n) => {
                self.type_name = Some("number");
                self.format = format_name(serde_json::to_value(&n.format));
                self.enumeration = enum_values(serde_json::to_value(&n.enumeration));
                self.numeric(
                    n.minimum,
                    n.maximum,
                    n.exclusive_minimum,
                    n.exclusive_maximum,
                );
                self.limit("multipleOf", n.multiple_of, Constraint::MultipleOf);
            }
            Type::Integer(n) => {
                self.type_name = Some("integer");
                self.format = format_name(serde_json::to_value(&n.format));
                self.enumeration = enum_values(serde_json::to_value(&n.enumeration));
                let float = |v: Option<i64>| v.map(|v| v as f64);
                self.numeric(
                    float(n.minimum),
                    float(n.maximum),
                    n.exclusive_minimum,
                    n.exclusive_maximum,
                );
                self.limit("multipleOf", float(n.multiple_of), Constraint::MultipleOf);
            }
            Type::Boolean(b) => {
                self.type_name = Some("boolean");
                self.enumeration = enum_values(serde_json::to_value(&b.enumeration));
            }
            Type::Object(object) => self.read_object(object),
            Type::Array(array) => self.read_array(array),
        }
    }

    fn read_string(&mut self, string: &'a StringType) {
        self.type_name = Some("string");
        self.format = format_name(serde_json::to_value(&string.format));
        self.enumeration = enum_values(serde_json::to_value(&string.enumeration));
        self.text(
            string.min_length,
            string.max_length,
            string.pattern.as_ref(),
        );
    }

    fn numeric(
        &mut self,
        min: Option<f64>,
        max: Option<f64>,
        exclusive_min: bool,
        exclusive_max: bool,
    ) {
        self.limit("minimum", min, Constraint::Min);
        self.limit("maximum", max, Constraint::Max);
        self.flag("exclusiveMinimum", exclusive_min, "true");
        self.flag("exclusiveMaximum", exclusive_max, "true");
    }

    fn read_object(&mut self, object: &'a ObjectType) {
        self.type_name = Some("object");
        self.members(
            &object.properties,
            &object.required,
            object.additional_properties.as_ref(),
            [object.min_properties, object.max_properties],
        );
    }

    fn additional_properties(&mut self, additional: Option<&'a AdditionalProperties>) {
        match additional {
            Some(AdditionalProperties::Any(allowed)) => {
                self.flag("additionalProperties", !allowed, "false");
            }
            Some(AdditionalProperties::Schema(schema)) => self.additional = Some(schema),
            None => {}
        }
    }

    fn read_array(&mut self, array: &'a ArrayType) {
        self.type_name = Some("array");
        self.items = array.items.as_ref();
        self.counts(["minItems", "maxItems"], array.min_items, array.max_items);
        self.flag("uniqueItems", array.unique_items, "true");
    }

    fn alternatives(&mut self, name: &'static str, variants: &'a [ReferenceOr<Schema>]) {
        self.type_name = Some(name);
        self.variants = variants.iter().collect();
    }

    /// `allOf`: the members' shapes in one.
    fn merge_all(
        &mut self,
        spec: &'a OpenAPI,
        all_of: &'a [ReferenceOr<Schema>],
        depth: usize,
    ) -> anyhow::Result<()> {
        for member in all_of {
            let (schema, _) = resolve::schema(spec, member)?;
            let member = Shape::of(spec, schema, depth + 1)?;
            self.type_name = self.type_name.or(member.type_name);
            self.format = self.format.take().or(member.format);
            self.nullable |= member.nullable;
            if self.enumeration.is_empty() {
                self.enumeration = member.enumeration;
            }
            self.constraints.extend(member.constraints);
            self.default = self.default.or(member.default);
            self.properties.extend(member.properties);
            self.required.extend(member.required);
            self.items = self.items.or(member.items);
            self.additional = self.additional.or(member.additional);
            self.variants.extend(member.variants);
        }
        Ok(())
    }

    /// openapiv3's catch-all for keyword mixes that fit no single type.
    fn read_any(
        &mut self,
        spec: &'a OpenAPI,
        any: &'a AnySchema,
        depth: usize,
    ) -> anyhow::Result<()> {
        self.type_name = any.typ.as_deref();
        self.format = any.format.clone();
        self.enumeration = any
            .enumeration
            .iter()
            .map(serde_json::Value::to_string)
            .collect();
        self.text(any.min_length, any.max_length, any.pattern.as_ref());
        self.numeric(
            any.minimum,
            any.maximum,
            any.exclusive_minimum == Some(true),
            any.exclusive_maximum == Some(true),
        );
        self.limit("multipleOf", any.multiple_of, Constraint::MultipleOf);
        self.members(
            &any.properties,
            &any.required,
            any.additional_properties.as_ref(),
            [any.min_properties, any.max_properties],
        );
        self.items = any.items.as_ref();
        self.counts(["minItems", "maxItems"], any.min_items, any.max_items);
        self.flag("uniqueItems", any.unique_items == Some(true), "true");
        self.variants = any.one_of.iter().chain(&any.any_of).collect();
        self.merge_all(spec, &any.all_of, depth)
    }
}

/// A validation keyword's value.
#[derive(Clone, Copy, PartialEq)]
pub enum Constraint<'a> {
    /// minLength, minimum, minItems, minProperties: raising it is stricter.
    Min(f64),
    /// maxLength, maximum, maxItems, maxProperties: lowering it is stricter.
    Max(f64),
    MultipleOf(f64),
    Pattern(&'a str),
    /// A keyword that is stricter when present (`uniqueItems: true`).
    Flag(&'static str),
}

impl Constraint<'_> {
    /// How the keyword moved from `old` to `new`; none when it did not.
    pub fn compare(old: Option<&Self>, new: Option<&Self>) -> Option<Change> {
        use Constraint::*;
        let (old, new) = match (old, new) {
            (None, None) => return None,
            (None, Some(_)) => return Some(Change::ConstraintTightened),
            (Some(_), None) => return Some(Change::ConstraintRelaxed),
            (Some(old), Some(new)) if old == new => return None,
            (Some(old), Some(new)) => (*old, *new),
        };
        let change = match (old, new) {
            (Max(old), Max(new)) if new < old => Change::ConstraintTightened,
            (Min(old), Min(new)) if new > old => Change::ConstraintTightened,
            (Max(_), Max(_)) | (Min(_), Min(_)) => Change::ConstraintRelaxed,
            // Multiples of 4 are a subset of the multiples of 2.
            (MultipleOf(old), MultipleOf(new)) if new % old == 0.0 => Change::ConstraintTightened,
            (MultipleOf(old), MultipleOf(new)) if old % new == 0.0 => Change::ConstraintRelaxed,
            _ => Change::ConstraintChanged,
        };
        Some(change)
    }

    pub fn text(&self) -> String {
        match self {
            Constraint::Min(v) | Constraint::Max(v) | Constraint::MultipleOf(v) => v.to_string(),
            Constraint::Pattern(pattern) => (*pattern).to_owned(),
            Constraint::Flag(text) => (*text).to_owned(),
        }
    }
}

/// A `format`, from its JSON form (openapiv3 parses known formats into per-type enums).
fn format_name(format: serde_json::Result<serde_json::Value>) -> Option<String> {
    match format {
        Ok(serde_json::Value::String(name)) => Some(name),
        _ => None,
    }
}

/// Enum values as JSON text (`"archived"`, `null`), from the enum's JSON form.
fn enum_values(values: serde_json::Result<serde_json::Value>) -> Vec<String> {
    match values {
        Ok(serde_json::Value::Array(values)) => values.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}
