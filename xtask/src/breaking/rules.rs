//! The rules: every difference the check can report, its stable name, and whether it breaks
//! existing callers.

use std::fmt;

/// Which side of an exchange a schema describes. Inputs (parameters and request bodies) break
/// callers when they get stricter; outputs (responses) break them when they get looser, because
/// deployed clients, the generated one included, parse exactly what the old spec promised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Parameter,
    Request,
    Response,
}

impl Direction {
    fn is_input(self) -> bool {
        self != Direction::Response
    }

    /// Whether `change` in a schema of this direction breaks existing callers.
    pub fn breaks(self, change: Change) -> bool {
        use Change::*;
        match change {
            // The generated client's type changes, or a value one side relies on disappears.
            TypeChanged | FormatChanged | PropertyRemoved | ConstraintChanged => true,
            // Stricter: callers may now send something that is refused.
            EnumValueRemoved
            | NullableRemoved
            | PropertyAddedRequired
            | PropertyMadeRequired
            | ConstraintTightened
            | VariantRemoved => self.is_input(),
            // Looser: clients may now receive something they cannot parse or did not expect.
            EnumValueAdded | NullableAdded | PropertyMadeOptional | ConstraintRelaxed
            | VariantAdded => !self.is_input(),
            PropertyAdded | DefaultChanged => false,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Parameter => "parameter",
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

/// A difference between two schemas, named without saying whether it breaks: that depends on
/// the [`Direction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `type` changed, or an `enum` appeared or disappeared (both change the generated type).
    TypeChanged,
    FormatChanged,
    NullableAdded,
    NullableRemoved,
    EnumValueAdded,
    EnumValueRemoved,
    /// maxLength/maximum/maxItems/maxProperties lowered, a minimum raised, a pattern,
    /// multipleOf, uniqueItems, exclusiveMinimum/Maximum or `additionalProperties: false` added.
    ConstraintTightened,
    ConstraintRelaxed,
    /// A pattern replaced by another, or a multipleOf by an unrelated one: neither stricter
    /// nor looser, so it breaks both ways.
    ConstraintChanged,
    DefaultChanged,
    PropertyAdded,
    PropertyAddedRequired,
    PropertyRemoved,
    PropertyMadeRequired,
    PropertyMadeOptional,
    /// A `oneOf`/`anyOf` alternative.
    VariantAdded,
    VariantRemoved,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::TypeChanged => "type-changed",
            Change::FormatChanged => "format-changed",
            Change::NullableAdded => "nullable-added",
            Change::NullableRemoved => "nullable-removed",
            Change::EnumValueAdded => "enum-value-added",
            Change::EnumValueRemoved => "enum-value-removed",
            Change::ConstraintTightened => "constraint-tightened",
            Change::ConstraintRelaxed => "constraint-relaxed",
            Change::ConstraintChanged => "constraint-changed",
            Change::DefaultChanged => "default-changed",
            Change::PropertyAdded => "property-added",
            Change::PropertyAddedRequired => "property-added-required",
            Change::PropertyRemoved => "property-removed",
            Change::PropertyMadeRequired => "property-made-required",
            Change::PropertyMadeOptional => "property-made-optional",
            Change::VariantAdded => "variant-added",
            Change::VariantRemoved => "variant-removed",
        })
    }
}

/// Every rule the check reports. The `Display` form is the stable name printed in each line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    OperationRemoved,
    OperationAdded,
    /// The generated client's method is named after the operationId.
    OperationIdChanged,
    OperationDeprecated,
    ApiVersionChanged,
    DocsChanged,

    ParameterRemoved,
    ParameterAdded,
    ParameterAddedRequired,
    ParameterMadeRequired,
    ParameterMadeOptional,
    /// Same name, another `in` (query, header, path, cookie).
    ParameterMoved,

    RequestBodyRemoved,
    RequestBodyAdded,
    RequestBodyAddedRequired,
    RequestBodyMadeRequired,
    RequestBodyMadeOptional,
    RequestMediaTypeRemoved,

    SuccessStatusRemoved,
    /// A success status replaced by another (`200` became `201`).
    SuccessStatusChanged,
    ResponseStatusAdded,
    /// Clients treat an undocumented error like a documented one: not breaking.
    ErrorStatusRemoved,
    ResponseMediaTypeRemoved,
    ResponseHeaderRemoved,

    SecurityRequirementAdded,
    SecurityRequirementRemoved,
    SecuritySchemeRemoved,
    SecuritySchemeChanged,
    SecuritySchemeAdded,

    /// A schema difference in a parameter, a request body or a response, named
    /// `<direction>-<change>`, e.g. `response-property-removed`.
    Schema(Direction, Change),
}

impl Rule {
    pub fn is_breaking(self) -> bool {
        use Rule::*;
        match self {
            OperationRemoved
            | OperationIdChanged
            | ParameterRemoved
            | ParameterAddedRequired
            | ParameterMadeRequired
            | ParameterMoved
            | RequestBodyRemoved
            | RequestBodyAddedRequired
            | RequestBodyMadeRequired
            | RequestMediaTypeRemoved
            | SuccessStatusRemoved
            | SuccessStatusChanged
            | ResponseMediaTypeRemoved
            | ResponseHeaderRemoved
            | SecurityRequirementAdded
            | SecuritySchemeRemoved
            | SecuritySchemeChanged => true,
            OperationAdded
            | OperationDeprecated
            | ApiVersionChanged
            | DocsChanged
            | ParameterAdded
            | ParameterMadeOptional
            | RequestBodyAdded
            | RequestBodyMadeOptional
            | ResponseStatusAdded
            | ErrorStatusRemoved
            | SecurityRequirementRemoved
            | SecuritySchemeAdded => false,
            Schema(direction, change) => direction.breaks(change),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Rule::*;
        let name = match self {
            Schema(direction, change) => return write!(f, "{direction}-{change}"),
            OperationRemoved => "operation-removed",
            OperationAdded => "operation-added",
            OperationIdChanged => "operation-id-changed",
            OperationDeprecated => "operation-deprecated",
            ApiVersionChanged => "api-version-changed",
            DocsChanged => "docs-changed",
            ParameterRemoved => "parameter-removed",
            ParameterAdded => "parameter-added",
            ParameterAddedRequired => "parameter-added-required",
            ParameterMadeRequired => "parameter-made-required",
            ParameterMadeOptional => "parameter-made-optional",
            ParameterMoved => "parameter-moved",
            RequestBodyRemoved => "request-body-removed",
            RequestBodyAdded => "request-body-added",
            RequestBodyAddedRequired => "request-body-added-required",
            RequestBodyMadeRequired => "request-body-made-required",
            RequestBodyMadeOptional => "request-body-made-optional",
            RequestMediaTypeRemoved => "request-media-type-removed",
            SuccessStatusRemoved => "success-status-removed",
            SuccessStatusChanged => "success-status-changed",
            ResponseStatusAdded => "response-status-added",
            ErrorStatusRemoved => "error-status-removed",
            ResponseMediaTypeRemoved => "response-media-type-removed",
            ResponseHeaderRemoved => "response-header-removed",
            SecurityRequirementAdded => "security-requirement-added",
            SecurityRequirementRemoved => "security-requirement-removed",
            SecuritySchemeRemoved => "security-scheme-removed",
            SecuritySchemeChanged => "security-scheme-changed",
            SecuritySchemeAdded => "security-scheme-added",
        };
        f.write_str(name)
    }
}

/// One reported difference: `breaking  response-property-removed  GET /v1/x 200: thread.subject`.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub rule: Rule,
    /// Where: `GET /path`, `GET /path query limit`, `POST /path body: subject`,
    /// `GET /path 200: thread.subject`, `security scheme apiKey`.
    pub location: String,
    /// What exactly, when the rule alone does not say: `maxLength 300 -> 200`, `"archived"`.
    pub detail: String,
}

impl Finding {
    pub fn is_breaking(&self) -> bool {
        self.rule.is_breaking()
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = if self.is_breaking() {
            "breaking"
        } else {
            "info"
        };
        write!(f, "{severity:<8}  {}  {}", self.rule, self.location)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}
