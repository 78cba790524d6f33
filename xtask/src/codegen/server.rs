//! The poem-openapi generator: wire types, one response enum per operation, the security
//! scheme, the `MessagingApi` trait and the `#[OpenApi]` glue that delegates to it.
//!
//! It supports the subset of OpenAPI 3.0 the spec uses and fails loudly on anything else, so a
//! spec change it cannot express is caught here rather than silently dropped.

use anyhow::{Context, anyhow, bail};
use openapiv3::{
    OpenAPI, Operation, Parameter, ParameterSchemaOrContent, ReferenceOr, Response, Schema,
    SchemaKind, SecurityScheme, StatusCode, StringFormat, Type, VariantOrUnknownOrEmpty,
};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use super::{pascal_case, snake_case};

/// The schema every error response must use.
const ERROR_SCHEMA: &str = "Problem";

/// `spec` is the parsed spec; `raw` the same document as JSON, for the object-level keywords
/// openapiv3 drops from a `type: object` schema (`oneOf`, `anyOf`).
pub fn generate(spec: &OpenAPI, raw: &serde_json::Value) -> anyhow::Result<TokenStream> {
    let components = spec
        .components
        .as_ref()
        .ok_or_else(|| anyhow!("spec has no components"))?;
    let ctx = Ctx { spec, raw };

    let tags = tags(spec);
    let security = security_scheme(spec)?;

    let mut types = Vec::new();
    for (name, schema) in &components.schemas {
        let schema = schema
            .as_item()
            .ok_or_else(|| anyhow!("schema {name} is a bare $ref"))?;
        types.push(
            ctx.schema_type(name, schema)
                .with_context(|| format!("schema {name}"))?,
        );
    }

    let mut trait_methods = Vec::new();
    let mut glue_methods = Vec::new();
    let mut op_items = Vec::new();
    for (path, method, op) in spec.operations() {
        let id = op
            .operation_id
            .as_deref()
            .ok_or_else(|| anyhow!("{method} {path} has no operationId"))?;
        let generated = ctx
            .operation(path, method, op)
            .with_context(|| format!("operation {id}"))?;
        trait_methods.push(generated.trait_method);
        glue_methods.push(generated.glue_method);
        op_items.push(generated.items);
    }

    Ok(quote! {
        //! Server side of the messaging API, generated from `openapi/messaging.yaml`.
        #![allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]

        // poem-openapi, with a `pattern` validator that compiles each pattern once: the
        // derive macros below write their paths from this name.
        use crate::patterns::poem_openapi;
        use poem_openapi::{ApiResponse, Enum, Object, OpenApi, SecurityScheme, Tags};
        use poem_openapi::param::{Header, Path, Query};
        // Answers are written straight from the wire types (`crate::json`); request bodies
        // are read by poem-openapi.
        use crate::json::Json;

        #tags
        #security

        /// Reads a JSON string field strictly: poem-openapi alone would accept a number or a
        /// boolean for a `String` and turn it into text, which hides a client's type error.
        /// `null` is refused as for every member the spec does not declare `nullable`.
        fn strict_string<T: poem_openapi::types::ParseFromJSON>(
            value: Option<serde_json::Value>,
        ) -> poem_openapi::types::ParseResult<T> {
            let not_text = |v: &serde_json::Value| matches!(v, serde_json::Value::Number(_) | serde_json::Value::Bool(_));
            match &value {
                Some(serde_json::Value::Null) => Err(null_refused()),
                Some(v) if not_text(v) => Err(poem_openapi::types::ParseError::custom("expected a string")),
                Some(serde_json::Value::Array(items)) if items.iter().any(not_text) => {
                    Err(poem_openapi::types::ParseError::custom("expected an array of strings"))
                }
                _ => T::parse_from_json(value),
            }
        }

        /// Reads an optional member that is not `nullable`: absent is `None`, `null` is refused
        /// (poem-openapi alone reads `null` as absent, which the spec's schema does not allow).
        fn not_null<T: poem_openapi::types::ParseFromJSON>(
            value: Option<serde_json::Value>,
        ) -> poem_openapi::types::ParseResult<T> {
            match value {
                Some(serde_json::Value::Null) => Err(null_refused()),
                value => T::parse_from_json(value),
            }
        }

        fn null_refused<T: poem_openapi::types::Type>() -> poem_openapi::types::ParseError<T> {
            poem_openapi::types::ParseError::custom("null is not allowed here: leave the member out instead")
        }
        #(#types)*
        #(#op_items)*

        /// One async method per operation of the spec. Implement it, wrap the implementation in
        /// [`Api`], and hand that to `poem_openapi::OpenApiService`.
        pub trait MessagingApi: Send + Sync + 'static {
            #(#trait_methods)*
        }

        /// The poem-openapi glue: routes each operation to the [`MessagingApi`] implementation.
        pub struct Api<T>(pub T);

        #[OpenApi]
        impl<T: MessagingApi> Api<T> {
            #(#glue_methods)*
        }
    })
}

struct Ctx<'a> {
    spec: &'a OpenAPI,
    raw: &'a serde_json::Value,
}

struct OperationCode {
    trait_method: TokenStream,
    glue_method: TokenStream,
    items: TokenStream,
}

fn doc_lines(text: Option<&str>) -> TokenStream {
    let Some(text) = text else { return quote!() };
    let lines = text.trim().lines().map(|l| format!(" {}", l.trim()));
    quote!(#(#[doc = #lines])*)
}

fn tags(spec: &OpenAPI) -> TokenStream {
    let variants = spec.tags.iter().map(|tag| {
        let ident = format_ident!("{}", pascal_case(&tag.name));
        let name = &tag.name;
        let doc = doc_lines(tag.description.as_deref());
        quote!(#doc #[oai(rename = #name)] #ident,)
    });
    quote! {
        /// Operation groups, as the spec's `tags`.
        #[derive(Tags)]
        pub enum ApiTags { #(#variants)* }
    }
}

fn security_scheme(spec: &OpenAPI) -> anyhow::Result<TokenStream> {
    let schemes = &spec.components.as_ref().unwrap().security_schemes;
    let [(name, scheme)] = schemes.iter().collect::<Vec<_>>()[..] else {
        bail!("the generator supports exactly one security scheme (an HTTP bearer scheme)");
    };
    let Some(SecurityScheme::HTTP {
        scheme,
        description,
        ..
    }) = scheme.as_item()
    else {
        bail!("security scheme {name} must be an inline HTTP scheme");
    };
    if scheme != "bearer" {
        bail!("security scheme {name} must use the bearer scheme");
    }
    let doc = doc_lines(description.as_deref());
    Ok(quote! {
        #doc
        #[derive(SecurityScheme)]
        #[oai(rename = #name, ty = "bearer")]
        pub struct ApiKeyAuth(pub poem_openapi::auth::Bearer);
    })
}

/// Rust type of a schema used as a field, parameter or array item.
fn is_required_wrapper(required: bool, ty: TokenStream) -> TokenStream {
    if required { ty } else { quote!(Option<#ty>) }
}

impl Ctx<'_> {
    fn resolve<'b, T>(&'b self, item: &'b ReferenceOr<T>, kind: &str) -> anyhow::Result<&'b T>
    where
        Self: Lookup<T>,
    {
        match item {
            ReferenceOr::Item(item) => Ok(item),
            ReferenceOr::Reference { reference } => {
                let name = reference
                    .strip_prefix(&format!("#/components/{kind}/"))
                    .ok_or_else(|| anyhow!("unsupported $ref {reference}"))?;
                self.lookup(name)
                    .ok_or_else(|| anyhow!("dangling $ref {reference}"))
            }
        }
    }

    /// The Rust type for a schema reference or an inline primitive.
    fn field_type(&self, schema: &ReferenceOr<Schema>) -> anyhow::Result<TokenStream> {
        match schema {
            ReferenceOr::Reference { reference } => {
                let name = reference
                    .strip_prefix("#/components/schemas/")
                    .ok_or_else(|| anyhow!("unsupported $ref {reference}"))?;
                let ident = format_ident!("{}", name);
                Ok(quote!(#ident))
            }
            ReferenceOr::Item(schema) => self.inline_type(schema),
        }
    }

    /// The raw JSON of a component schema.
    fn raw_schema(&self, name: &str) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.raw
            .pointer(&format!("/components/schemas/{name}"))?
            .as_object()
    }

    /// Whether a component schema carries object-level rules (`oneOf`/`anyOf`).
    fn has_object_rules(&self, name: &str) -> bool {
        self.raw_schema(name)
            .is_some_and(|s| s.contains_key("oneOf") || s.contains_key("anyOf"))
    }

    /// The body wrapper of a request body schema with object-level rules.
    fn rules_wrapper(&self, schema: &ReferenceOr<Schema>) -> Option<proc_macro2::Ident> {
        let ReferenceOr::Reference { reference } = schema else {
            return None;
        };
        let name = reference.strip_prefix("#/components/schemas/")?;
        self.has_object_rules(name)
            .then(|| format_ident!("{}Body", name))
    }

    /// For an object schema with `oneOf`/`anyOf` (each branch `required` names and `enum`s or
    /// `pattern`s of its properties): a `<Name>Body` newtype used as the request body, whose schema is the
    /// object's with those rules added. poem-openapi's `Object` derive cannot state them; the
    /// service refuses what they refuse, with its own stable codes.
    fn object_rules(&self, name: &str, obj: &openapiv3::ObjectType) -> anyhow::Result<TokenStream> {
        let raw = self
            .raw_schema(name)
            .ok_or_else(|| anyhow!("schema {name} missing from the raw spec"))?;
        for keyword in ["allOf", "not"] {
            if raw.contains_key(keyword) {
                bail!("{keyword} on an object is not supported");
            }
        }
        if !self.has_object_rules(name) {
            return Ok(quote!());
        }
        let mut branches = Vec::new();
        for keyword in ["oneOf", "anyOf"] {
            let list = match raw.get(keyword) {
                None => vec![],
                Some(serde_json::Value::Array(list)) if !list.is_empty() => list
                    .iter()
                    .map(|branch| rule_branch(branch, obj))
                    .collect::<anyhow::Result<Vec<_>>>()
                    .with_context(|| format!("{keyword} of {name}"))?,
                Some(_) => bail!("{keyword} of {name} must be a non-empty list"),
            };
            branches.push(list);
        }
        let (one_of, any_of) = (&branches[0], &branches[1]);
        let ident = format_ident!("{}", name);
        let wrapper = format_ident!("{}Body", name);
        let doc = format!(
            " `{name}` as a request body: its schema with the spec's `oneOf`/`anyOf` rules, which \
             poem-openapi's `Object` cannot state (the service refuses what they refuse)."
        );
        Ok(quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, PartialEq)]
            pub struct #wrapper(pub #ident);

            impl poem_openapi::types::Type for #wrapper {
                const IS_REQUIRED: bool = true;
                type RawValueType = #ident;
                type RawElementValueType = #ident;

                fn name() -> ::std::borrow::Cow<'static, str> {
                    <#ident as poem_openapi::types::Type>::name()
                }

                fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                    <#ident as poem_openapi::types::Type>::schema_ref()
                }

                fn register(registry: &mut poem_openapi::registry::Registry) {
                    <#ident as poem_openapi::types::Type>::register(registry);
                    let schema = registry.schemas.get_mut(#name).expect("registered just above");
                    schema.one_of = vec![#(#one_of),*];
                    schema.any_of = vec![#(#any_of),*];
                }

                fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                    Some(&self.0)
                }

                fn raw_element_iter<'a>(
                    &'a self,
                ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                    Box::new(self.as_raw_value().into_iter())
                }
            }

            impl poem_openapi::types::ParseFromJSON for #wrapper {
                fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
                    <#ident as poem_openapi::types::ParseFromJSON>::parse_from_json(value)
                        .map(Self)
                        .map_err(poem_openapi::types::ParseError::propagate)
                }
            }
        })
    }

    fn inline_type(&self, schema: &Schema) -> anyhow::Result<TokenStream> {
        Ok(match &schema.schema_kind {
            SchemaKind::Type(Type::String(s)) => {
                if !s.enumeration.is_empty() {
                    bail!(
                        "inline enums are not supported: declare the enum under components/schemas"
                    );
                }
                match &s.format {
                    VariantOrUnknownOrEmpty::Item(StringFormat::DateTime) => {
                        quote!(chrono::DateTime<chrono::Utc>)
                    }
                    VariantOrUnknownOrEmpty::Unknown(f) if f == "uuid" => quote!(uuid::Uuid),
                    VariantOrUnknownOrEmpty::Empty => quote!(String),
                    other => bail!("unsupported string format {other:?}"),
                }
            }
            SchemaKind::Type(Type::Integer(i)) => match &i.format {
                VariantOrUnknownOrEmpty::Item(openapiv3::IntegerFormat::Int32) => quote!(i32),
                _ => quote!(i64),
            },
            SchemaKind::Type(Type::Number(_)) => quote!(f64),
            SchemaKind::Type(Type::Boolean(_)) => quote!(bool),
            SchemaKind::Type(Type::Array(a)) => {
                let items = a
                    .items
                    .as_ref()
                    .ok_or_else(|| anyhow!("array without items"))?;
                let item = match items {
                    ReferenceOr::Reference { reference } => {
                        self.field_type(&ReferenceOr::Reference {
                            reference: reference.clone(),
                        })?
                    }
                    ReferenceOr::Item(schema) => self.inline_type(schema)?,
                };
                quote!(Vec<#item>)
            }
            other => bail!(
                "unsupported inline schema {other:?}: declare objects under components/schemas"
            ),
        })
    }

    /// `#[oai(validator(...))]` contents for a schema's constraints.
    fn validators(&self, schema: &ReferenceOr<Schema>) -> Vec<TokenStream> {
        let ReferenceOr::Item(schema) = schema else {
            return vec![];
        };
        let mut v = Vec::new();
        match &schema.schema_kind {
            SchemaKind::Type(Type::String(s)) => {
                if let Some(n) = s.max_length {
                    let n = Literal::usize_unsuffixed(n);
                    v.push(quote!(max_length = #n));
                }
                if let Some(n) = s.min_length {
                    let n = Literal::usize_unsuffixed(n);
                    v.push(quote!(min_length = #n));
                }
                if let Some(p) = &s.pattern {
                    v.push(quote!(pattern = #p));
                }
            }
            SchemaKind::Type(Type::Integer(i)) => {
                if let Some(n) = i.minimum {
                    let n = n.to_string();
                    v.push(quote!(minimum(value = #n)));
                }
                if let Some(n) = i.maximum {
                    let n = n.to_string();
                    v.push(quote!(maximum(value = #n)));
                }
            }
            SchemaKind::Type(Type::Array(a)) => {
                // poem-openapi applies string and number validators of a `Vec` to its items.
                if let Some(ReferenceOr::Item(items)) = &a.items {
                    v.extend(self.validators(&ReferenceOr::Item((**items).clone())));
                }
                if let Some(n) = a.max_items {
                    let n = Literal::usize_unsuffixed(n);
                    v.push(quote!(max_items = #n));
                }
                if let Some(n) = a.min_items {
                    let n = Literal::usize_unsuffixed(n);
                    v.push(quote!(min_items = #n));
                }
            }
            _ => {}
        }
        v
    }

    fn schema_type(&self, name: &str, schema: &Schema) -> anyhow::Result<TokenStream> {
        let ident = format_ident!("{}", name);
        let doc = doc_lines(schema.schema_data.description.as_deref());
        match &schema.schema_kind {
            SchemaKind::Type(Type::String(s)) if !s.enumeration.is_empty() => {
                let variants = s.enumeration.iter().map(|value| {
                    let value = value.as_deref().unwrap_or_default();
                    let variant = format_ident!("{}", pascal_case(value));
                    quote!(#[oai(rename = #value)] #variant,)
                });
                let as_str = s.enumeration.iter().map(|value| {
                    let value = value.as_deref().unwrap_or_default();
                    let variant = format_ident!("{}", pascal_case(value));
                    quote!(Self::#variant => #value,)
                });
                let from_str = s.enumeration.iter().map(|value| {
                    let value = value.as_deref().unwrap_or_default();
                    let variant = format_ident!("{}", pascal_case(value));
                    quote!(#value => Ok(Self::#variant),)
                });
                Ok(quote! {
                    #doc
                    #[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
                    pub enum #ident { #(#variants)* }

                    impl #ident {
                        /// The wire name of this value.
                        pub fn as_str(self) -> &'static str {
                            match self { #(#as_str)* }
                        }
                    }

                    impl ::std::str::FromStr for #ident {
                        type Err = String;
                        fn from_str(s: &str) -> Result<Self, Self::Err> {
                            match s { #(#from_str)* other => Err(format!("unknown {} value `{other}`", #name)) }
                        }
                    }

                    /// Writes the wire name, as poem-openapi's `ToJSON` does.
                    impl serde::Serialize for #ident {
                        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                            serializer.serialize_str(self.as_str())
                        }
                    }
                })
            }
            SchemaKind::Type(Type::Object(_)) | SchemaKind::Any(_) => {
                let object_with_rules;
                let obj = match &schema.schema_kind {
                    SchemaKind::Type(Type::Object(obj)) => obj,
                    SchemaKind::Any(any) => {
                        object_with_rules = object_of(any)?;
                        &object_with_rules
                    }
                    _ => unreachable!("matched above"),
                };
                let mut fields = Vec::new();
                let mut serialized = Vec::new();
                for (prop, prop_schema) in &obj.properties {
                    let required = obj.required.contains(prop);
                    let unboxed = unbox(prop_schema);
                    let ty = is_required_wrapper(required, self.field_type(&unboxed)?);
                    let field = rust_ident(&snake_case(prop));
                    let prop_doc = match &unboxed {
                        ReferenceOr::Item(s) => doc_lines(s.schema_data.description.as_deref()),
                        ReferenceOr::Reference { .. } => quote!(),
                    };
                    if let ReferenceOr::Item(s) = &unboxed
                        && s.schema_data.nullable
                    {
                        bail!("property {prop}: `nullable` is not supported yet");
                    }
                    if let ReferenceOr::Reference { reference } = &unboxed
                        && self
                            .has_object_rules(reference.trim_start_matches("#/components/schemas/"))
                    {
                        bail!(
                            "property {prop}: schemas with oneOf/anyOf are supported as request bodies only"
                        );
                    }
                    let mut attrs = vec![quote!(rename = #prop)];
                    if is_plain_string(&unboxed) {
                        attrs.push(quote!(deserialize_with = "strict_string"));
                    } else if !required {
                        attrs.push(quote!(deserialize_with = "not_null"));
                    }
                    if !required {
                        attrs.push(quote!(skip_serializing_if_is_none));
                    }
                    let validators = self.validators(&unboxed);
                    if !validators.is_empty() {
                        attrs.push(quote!(validator(#(#validators),*)));
                    }
                    fields.push(quote!(#prop_doc #[oai(#(#attrs),*)] pub #field: #ty,));
                    serialized.push((
                        prop.as_str(),
                        serialize_field(prop, &field, required, &unboxed)?,
                    ));
                }
                // poem-openapi's `ToJSON` builds a `serde_json::Map`, which orders keys by name.
                serialized.sort_by_key(|(prop, _)| *prop);
                let serialized = serialized.into_iter().map(|(_, code)| code);
                let field_count = obj.properties.len();
                let (example_attr, example_impl) = match &schema.schema_data.example {
                    Some(example) => {
                        let json = serde_json::to_string(example)?;
                        let message = format!("the example of {name} in the spec must be valid");
                        (
                            quote!(#[oai(example)]),
                            quote! {
                                impl poem_openapi::types::Example for #ident {
                                    fn example() -> Self {
                                        let value: serde_json::Value = serde_json::from_str(#json).expect(#message);
                                        <Self as poem_openapi::types::ParseFromJSON>::parse_from_json(Some(value))
                                            .expect(#message)
                                    }
                                }
                            },
                        )
                    }
                    None => (quote!(), quote!()),
                };
                let default_derive = if obj.required.is_empty() {
                    quote!(, Default)
                } else {
                    quote!()
                };
                if obj.min_properties.is_some() || obj.max_properties.is_some() {
                    bail!(
                        "minProperties/maxProperties are not supported: state the rule with anyOf"
                    );
                }
                let rules = self.object_rules(name, obj)?;
                Ok(quote! {
                    #doc
                    #[derive(Object, Debug, Clone, PartialEq #default_derive)]
                    #example_attr
                    pub struct #ident { #(#fields)* }
                    #example_impl
                    #rules

                    /// Writes the JSON that poem-openapi's `ToJSON` would (keys by name, absent
                    /// optional fields left out, times in RFC 3339), straight to the serializer.
                    impl serde::Serialize for #ident {
                        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                            use serde::ser::SerializeStruct;
                            let mut object = serializer.serialize_struct(#name, #field_count)?;
                            #(#serialized)*
                            object.end()
                        }
                    }
                })
            }
            other => bail!("unsupported top-level schema {other:?}"),
        }
    }

    fn operation(&self, path: &str, method: &str, op: &Operation) -> anyhow::Result<OperationCode> {
        let op_id = op.operation_id.as_deref().unwrap();
        let fn_name = format_ident!("{}", snake_case(op_id));
        let type_prefix = pascal_case(op_id);
        let response_ident = format_ident!("{}Response", type_prefix);
        let params_ident = format_ident!("{}Params", type_prefix);

        let summary = op
            .summary
            .as_deref()
            .ok_or_else(|| anyhow!("operation needs a summary"))?;
        let mut doc_text = summary.to_string();
        if let Some(description) = &op.description {
            doc_text.push_str("\n\n");
            doc_text.push_str(description.trim());
        }
        let doc = doc_lines(Some(&doc_text));
        let tag = match op.tags.as_slice() {
            [tag] => format!("ApiTags::{}", pascal_case(tag)),
            _ => bail!("each operation needs exactly one tag"),
        };
        let security = op.security.as_ref().or(self.spec.security.as_ref());
        let secured = security.is_some_and(|s| !s.is_empty());
        let poem_path = path.replace('{', ":").replace('}', "");

        // Parameters: glue arguments, the params struct, and the conversion between them.
        let mut glue_args = Vec::new();
        let mut param_fields = Vec::new();
        let mut param_inits = Vec::new();
        let mut defaults = Vec::new();
        for param in &op.parameters {
            let param = self.resolve(param, "parameters")?;
            let (data, wrapper) = match param {
                Parameter::Query { parameter_data, .. } => (parameter_data, quote!(Query)),
                Parameter::Path { parameter_data, .. } => (parameter_data, quote!(Path)),
                Parameter::Header { parameter_data, .. } => (parameter_data, quote!(Header)),
                Parameter::Cookie { .. } => bail!("cookie parameters are not supported"),
            };
            let ParameterSchemaOrContent::Schema(schema) = &data.format else {
                bail!("parameter {} must have a schema", data.name);
            };
            let ident = rust_ident(&snake_case(&data.name));
            let name = &data.name;
            let base_ty = self.field_type(schema)?;
            let default = schema.as_item().and_then(|s| s.schema_data.default.clone());
            let mut attrs = vec![quote!(name = #name)];
            let validators = self.validators(schema);
            if !validators.is_empty() {
                attrs.push(quote!(validator(#(#validators),*)));
            }
            let ty = if let Some(default) = default {
                let default_fn =
                    format_ident!("default_{}_{}", snake_case(op_id), snake_case(&data.name));
                let literal: TokenStream = default
                    .to_string()
                    .parse()
                    .map_err(|_| anyhow!("bad default"))?;
                let default_path = default_fn.to_string();
                defaults.push(quote!(fn #default_fn() -> #base_ty { #literal }));
                attrs.push(quote!(default = #default_path));
                base_ty
            } else {
                is_required_wrapper(data.required, base_ty)
            };
            let pdoc = doc_lines(data.description.as_deref());
            glue_args.push(quote!(#pdoc #[oai(#(#attrs),*)] #ident: #wrapper<#ty>));
            param_fields.push(quote!(#pdoc pub #ident: #ty,));
            param_inits.push(quote!(#ident: #ident.0,));
        }

        let mut trait_args = Vec::new();
        let mut call_args = Vec::new();
        let mut glue_head = Vec::new();
        if secured {
            glue_head.push(quote!(auth: ApiKeyAuth));
            trait_args.push(quote!(api_key: String));
            call_args.push(quote!(auth.0.token));
        }
        let params_struct = if param_fields.is_empty() {
            quote!()
        } else {
            let doc = format!(" Parameters of `{op_id}`.");
            trait_args.push(quote!(params: #params_ident));
            call_args.push(quote!(#params_ident { #(#param_inits)* }));
            quote! {
                #[doc = #doc]
                #[derive(Debug, Clone)]
                pub struct #params_ident { #(#param_fields)* }
            }
        };
        if let Some(body) = &op.request_body {
            let body = self.resolve(body, "requestBodies")?;
            let media = body
                .content
                .get("application/json")
                .ok_or_else(|| anyhow!("request bodies must be application/json"))?;
            let schema = media
                .schema
                .as_ref()
                .ok_or_else(|| anyhow!("request body without schema"))?;
            let ty = self.field_type(schema)?;
            let bdoc = doc_lines(body.description.as_deref());
            match self.rules_wrapper(schema) {
                Some(wrapper) => {
                    glue_args.push(quote!(#bdoc body: poem_openapi::payload::Json<#wrapper>));
                    call_args.push(quote!(body.0.0));
                }
                None => {
                    glue_args.push(quote!(#bdoc body: poem_openapi::payload::Json<#ty>));
                    call_args.push(quote!(body.0));
                }
            }
            trait_args.push(quote!(body: #ty));
        }

        // Responses: one enum per operation, plus the Problem conversion for its error statuses.
        let mut variants = Vec::new();
        let mut problem_arms = Vec::new();
        let mut has_500 = false;
        let mut streaming = false;
        for (status, response) in &op.responses.responses {
            let StatusCode::Code(code) = status else {
                bail!("status ranges are not supported")
            };
            let response = self.resolve(response, "responses")?;
            let variant = format_ident!("{}", status_variant(*code)?);
            let rdoc = doc_lines(Some(&response.description));
            let headers = self.response_headers(response)?;
            let payload = response_payload(self, response)?;
            let status_lit = Literal::u16_unsuffixed(*code);
            let mut attrs = vec![quote!(status = #status_lit)];
            if let Some(ct) = payload.as_ref().map(|p| &p.content_type)
                && ct != "application/json"
            {
                attrs.push(quote!(content_type = #ct));
            }
            attrs.extend(headers);
            let fields = match &payload {
                Some(Payload {
                    ty, stream: true, ..
                }) => {
                    streaming = true;
                    quote!((crate::SseStream<#ty>))
                }
                Some(Payload { ty, .. }) => quote!((Json<#ty>)),
                None => quote!(),
            };
            variants.push(quote!(#rdoc #[oai(#(#attrs),*)] #variant #fields,));
            if *code >= 400 {
                match &payload {
                    Some(p) if p.schema == ERROR_SCHEMA => {}
                    _ => bail!("error response {code} must carry the {ERROR_SCHEMA} schema"),
                }
                has_500 |= *code == 500;
                problem_arms.push(quote!(#code => Self::#variant(Json(problem)),));
            }
        }
        if !has_500 {
            bail!("every operation must declare a 500 response");
        }
        let problem_ident = format_ident!("{}", ERROR_SCHEMA);
        let response_doc = format!(" Responses of `{op_id}`.");
        let conversion_doc = format!(
            " Picks the variant for `problem.status`; a status `{op_id}` does not declare becomes a 500."
        );
        // A stream has no `Debug`; say which variant it is instead.
        let (derive_debug, manual_debug) = if streaming {
            let name = response_ident.to_string();
            (
                quote!(),
                quote! {
                    impl ::std::fmt::Debug for #response_ident {
                        fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                            f.write_str(#name)
                        }
                    }
                },
            )
        } else {
            (quote!(, Debug), quote!())
        };
        let items = quote! {
            #params_struct
            #[doc = #response_doc]
            #[derive(ApiResponse #derive_debug)]
            pub enum #response_ident { #(#variants)* }
            #manual_debug

            impl From<#problem_ident> for #response_ident {
                #[doc = #conversion_doc]
                fn from(mut problem: #problem_ident) -> Self {
                    match problem.status as u16 {
                        #(#problem_arms)*
                        undeclared => {
                            debug_assert!(false, "{} answered {undeclared}, which the spec does not declare for it", #op_id);
                            problem.status = 500;
                            Self::InternalServerError(Json(problem))
                        }
                    }
                }
            }
            #(#defaults)*
        };

        let method_ident = method.to_string();
        let trait_method = quote! {
            #doc
            fn #fn_name(&self, #(#trait_args),*) -> impl ::std::future::Future<Output = #response_ident> + Send;
        };
        let glue_method = quote! {
            #doc
            #[oai(path = #poem_path, method = #method_ident, operation_id = #op_id, tag = #tag)]
            async fn #fn_name(&self, #(#glue_head,)* #(#glue_args),*) -> #response_ident {
                self.0.#fn_name(#(#call_args),*).await
            }
        };
        Ok(OperationCode {
            trait_method,
            glue_method,
            items,
        })
    }

    /// Documentation-only response headers: whoever answers with this status sets them.
    fn response_headers(&self, response: &Response) -> anyhow::Result<Vec<TokenStream>> {
        let mut out = Vec::new();
        for (name, header) in &response.headers {
            let header = self.resolve(header, "headers")?;
            let ParameterSchemaOrContent::Schema(schema) = &header.format else {
                bail!("header {name} must have a schema");
            };
            let ty = self.field_type(schema)?;
            let ty = is_required_wrapper(header.required, ty)
                .to_string()
                .replace(' ', "");
            let description = header.description.clone().unwrap_or_default();
            out.push(quote!(header(name = #name, ty = #ty, description = #description)));
        }
        Ok(out)
    }
}

/// The body of a response: its media type, Rust type and component schema name.
struct Payload {
    content_type: String,
    ty: TokenStream,
    schema: String,
    /// `text/event-stream`: a stream of `ty` (`SseStream`, each event rendered once), not one
    /// value.
    stream: bool,
}

/// The media type of server-sent events.
const EVENT_STREAM: &str = "text/event-stream";

fn response_payload(ctx: &Ctx<'_>, response: &Response) -> anyhow::Result<Option<Payload>> {
    let Some((content_type, media)) = response.content.iter().next() else {
        return Ok(None);
    };
    if response.content.len() > 1 {
        bail!("responses carry a single media type");
    }
    let schema = media
        .schema
        .as_ref()
        .ok_or_else(|| anyhow!("response without schema"))?;
    let (schema, stream) = if content_type == EVENT_STREAM {
        (event_stream_items(schema)?, true)
    } else {
        (schema.clone(), false)
    };
    let ReferenceOr::Reference { reference } = &schema else {
        bail!("response bodies must $ref a component schema");
    };
    Ok(Some(Payload {
        content_type: content_type.clone(),
        ty: ctx.field_type(&schema)?,
        schema: reference
            .trim_start_matches("#/components/schemas/")
            .to_string(),
        stream,
    }))
}

/// The item schema of a `text/event-stream` body, written as poem-openapi describes its
/// `EventStream`: `type: array` (with `format: event-stream`) whose `items` `$ref` the event.
fn event_stream_items(schema: &ReferenceOr<Schema>) -> anyhow::Result<ReferenceOr<Schema>> {
    // openapiv3 reads an array with a `format` as an untyped schema.
    let items = match schema.as_item().map(|s| &s.schema_kind) {
        Some(SchemaKind::Any(any))
            if any.typ.as_deref() == Some("array")
                && any.format.as_deref() == Some("event-stream") =>
        {
            any.items.as_ref()
        }
        _ => {
            bail!("{EVENT_STREAM} bodies must be `type: array, format: event-stream, items: $ref`")
        }
    };
    match items {
        Some(items @ ReferenceOr::Reference { .. }) => Ok(unbox(items)),
        _ => bail!("{EVENT_STREAM} items must $ref a component schema"),
    }
}

fn status_variant(code: u16) -> anyhow::Result<&'static str> {
    Ok(match code {
        200 => "Ok",
        201 => "Created",
        202 => "Accepted",
        204 => "NoContent",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        413 => "PayloadTooLarge",
        414 => "UriTooLong",
        415 => "UnsupportedMediaType",
        422 => "UnprocessableEntity",
        429 => "TooManyRequests",
        431 => "RequestHeaderFieldsTooLarge",
        500 => "InternalServerError",
        503 => "ServiceUnavailable",
        other => bail!("status {other} has no variant name yet: add it to status_variant"),
    })
}

/// The statement of a generated `Serialize` impl that writes one field (`object` is the
/// `SerializeStruct`). Times go through [`crate::json::Rfc3339`] (poem-openapi's format); an
/// absent optional field is left out, as `skip_serializing_if_is_none` does.
fn serialize_field(
    prop: &str,
    field: &proc_macro2::Ident,
    required: bool,
    schema: &ReferenceOr<Schema>,
) -> anyhow::Result<TokenStream> {
    let item_kind = |schema: &ReferenceOr<Schema>| match schema {
        ReferenceOr::Item(schema) => Some(schema.schema_kind.clone()),
        ReferenceOr::Reference { .. } => None,
    };
    let is_date_time = |kind: &Option<SchemaKind>| {
        matches!(kind, Some(SchemaKind::Type(Type::String(s)))
            if matches!(s.format, VariantOrUnknownOrEmpty::Item(StringFormat::DateTime)))
    };
    let kind = item_kind(schema);
    if let Some(SchemaKind::Type(Type::Array(a))) = &kind
        && let Some(items) = &a.items
        && is_date_time(&item_kind(&unbox(items)))
    {
        bail!("arrays of date-time are not supported in responses");
    }
    let value = if is_date_time(&kind) {
        quote!(&crate::json::Rfc3339(value))
    } else {
        quote!(value)
    };
    Ok(if required {
        quote!({ let value = &self.#field; object.serialize_field(#prop, #value)?; })
    } else {
        quote!(if let Some(value) = &self.#field { object.serialize_field(#prop, #value)?; })
    })
}

/// A string without a format, or an array of them: the fields `strict_string` guards.
fn is_plain_string(schema: &ReferenceOr<Schema>) -> bool {
    let ReferenceOr::Item(schema) = schema else {
        return false;
    };
    match &schema.schema_kind {
        SchemaKind::Type(Type::String(s)) => {
            s.enumeration.is_empty() && matches!(s.format, VariantOrUnknownOrEmpty::Empty)
        }
        SchemaKind::Type(Type::Array(a)) => a.items.as_ref().is_some_and(|items| match items {
            ReferenceOr::Item(item) => is_plain_string(&unbox(&ReferenceOr::Item(item.clone()))),
            ReferenceOr::Reference { .. } => false,
        }),
        _ => false,
    }
}

/// A field or argument name, raw only where it is a Rust keyword (`type` -> `r#type`).
fn rust_ident(name: &str) -> proc_macro2::Ident {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
        "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move",
        "mut", "pub", "ref", "return", "static", "struct", "trait", "true", "type", "unsafe",
        "use", "where", "while",
    ];
    if KEYWORDS.contains(&name) {
        format_ident!("r#{}", name)
    } else {
        format_ident!("{}", name)
    }
}

fn unbox(schema: &ReferenceOr<Box<Schema>>) -> ReferenceOr<Schema> {
    match schema {
        ReferenceOr::Reference { reference } => ReferenceOr::Reference {
            reference: reference.clone(),
        },
        ReferenceOr::Item(schema) => ReferenceOr::Item((**schema).clone()),
    }
}

/// Looks up a named component of one kind.
trait Lookup<T> {
    fn lookup(&self, name: &str) -> Option<&T>;
}

macro_rules! lookup {
    ($ty:ty, $field:ident) => {
        impl Lookup<$ty> for Ctx<'_> {
            fn lookup(&self, name: &str) -> Option<&$ty> {
                self.spec.components.as_ref()?.$field.get(name)?.as_item()
            }
        }
    };
}
lookup!(Parameter, parameters);
lookup!(Response, responses);
lookup!(openapiv3::RequestBody, request_bodies);
lookup!(openapiv3::Header, headers);

/// One branch of an object's `oneOf`/`anyOf`: `required` names of the object's properties and
/// `properties` that narrow a string property to an `enum` or a `pattern`; nothing else.
fn rule_branch(
    branch: &serde_json::Value,
    obj: &openapiv3::ObjectType,
) -> anyhow::Result<TokenStream> {
    let map = branch
        .as_object()
        .ok_or_else(|| anyhow!("each branch must be an object"))?;
    let mut required = Vec::new();
    let mut properties = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "required" => {
                for name in value
                    .as_array()
                    .ok_or_else(|| anyhow!("required must be a list"))?
                {
                    let name = name
                        .as_str()
                        .ok_or_else(|| anyhow!("required names must be strings"))?;
                    if !obj.properties.contains_key(name) {
                        bail!("required {name} is not a property of the object");
                    }
                    required.push(name.to_string());
                }
            }
            "properties" => {
                for (prop, schema) in value
                    .as_object()
                    .ok_or_else(|| anyhow!("properties must be a map"))?
                {
                    if !obj.properties.contains_key(prop) {
                        bail!("property {prop} is not a property of the object");
                    }
                    let schema = schema
                        .as_object()
                        .filter(|s| {
                            !s.is_empty() && s.keys().all(|k| k == "enum" || k == "pattern")
                        })
                        .ok_or_else(|| {
                            anyhow!(
                                "property {prop} in a branch may only carry an enum or a pattern"
                            )
                        })?;
                    let values = match schema.get("enum") {
                        None => vec![],
                        Some(values) => values
                            .as_array()
                            .ok_or_else(|| anyhow!("enum of {prop} must be a list"))?
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(|v| quote!(serde_json::Value::String(#v.to_string())))
                                    .ok_or_else(|| anyhow!("enum values of {prop} must be strings"))
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?,
                    };
                    let pattern = match schema.get("pattern") {
                        None => quote!(None),
                        Some(p) => {
                            let p = p
                                .as_str()
                                .ok_or_else(|| anyhow!("pattern of {prop} must be a string"))?;
                            quote!(Some(#p.to_string()))
                        }
                    };
                    properties.push(quote! {
                        (#prop, poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
                            poem_openapi::registry::MetaSchema {
                                enum_items: vec![#(#values),*],
                                pattern: #pattern,
                                ..poem_openapi::registry::MetaSchema::ANY
                            },
                        )))
                    });
                }
            }
            other => bail!("`{other}` in a branch is not supported"),
        }
    }
    Ok(quote! {
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
            required: vec![#(#required),*],
            properties: vec![#(#properties),*],
            ..poem_openapi::registry::MetaSchema::ANY
        }))
    })
}

/// An object schema that openapiv3 reads as untyped because it carries `oneOf`/`anyOf`: its
/// object part (the rules themselves are read from the raw spec by `object_rules`).
fn object_of(any: &openapiv3::AnySchema) -> anyhow::Result<openapiv3::ObjectType> {
    let only_object_keywords = any.typ.as_deref() == Some("object")
        && any.pattern.is_none()
        && any.multiple_of.is_none()
        && any.exclusive_minimum.is_none()
        && any.exclusive_maximum.is_none()
        && any.minimum.is_none()
        && any.maximum.is_none()
        && any.items.is_none()
        && any.min_items.is_none()
        && any.max_items.is_none()
        && any.unique_items.is_none()
        && any.enumeration.is_empty()
        && any.format.is_none()
        && any.min_length.is_none()
        && any.max_length.is_none()
        && any.all_of.is_empty()
        && any.not.is_none()
        && (!any.one_of.is_empty() || !any.any_of.is_empty());
    if !only_object_keywords {
        bail!("unsupported top-level schema {any:?}");
    }
    Ok(openapiv3::ObjectType {
        properties: any.properties.clone(),
        required: any.required.clone(),
        additional_properties: any.additional_properties.clone(),
        min_properties: any.min_properties,
        max_properties: any.max_properties,
    })
}
