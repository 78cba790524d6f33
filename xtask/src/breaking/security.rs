//! Security: each operation's requirements, and the schemes in `components`.

use openapiv3::{OpenAPI, Operation, ReferenceOr, SecurityScheme};

use super::Diff;
use super::rules::Rule;

/// One way to call an operation: schemes (with their scopes) presented together. An operation
/// accepts any of its alternatives; one without security has a single empty alternative.
type Alternative<'a> = Vec<(&'a str, &'a [String])>;

/// The operation's own `security`, or else the spec's.
fn alternatives<'a>(spec: &'a OpenAPI, operation: &'a Operation) -> Vec<Alternative<'a>> {
    let requirements = operation.security.as_ref().or(spec.security.as_ref());
    match requirements {
        Some(requirements) if !requirements.is_empty() => requirements
            .iter()
            .map(|requirement| {
                let schemes = requirement.iter();
                schemes
                    .map(|(scheme, scopes)| (scheme.as_str(), scopes.as_slice()))
                    .collect()
            })
            .collect(),
        _ => vec![Vec::new()],
    }
}

/// Whether credentials that satisfy `have` also satisfy `need`: every scheme of `need`, with
/// all its scopes, is in `have`.
fn satisfies(have: &Alternative, need: &Alternative) -> bool {
    need.iter().all(|(scheme, scopes)| {
        have.iter()
            .any(|(held, granted)| held == scheme && scopes.iter().all(|s| granted.contains(s)))
    })
}

/// The alternatives of `from` whose callers `to` turns away.
fn unmet<'x, 'a>(
    from: &'x [Alternative<'a>],
    to: &'x [Alternative<'a>],
) -> impl Iterator<Item = &'x Alternative<'a>> {
    from.iter()
        .filter(move |have| !to.iter().any(|need| satisfies(have, need)))
}

fn show(alternatives: &[Alternative]) -> String {
    let show_one = |alternative: &Alternative| {
        if alternative.is_empty() {
            return "none".to_owned();
        }
        let schemes = alternative.iter().map(|(scheme, scopes)| match scopes {
            [] => (*scheme).to_owned(),
            scopes => format!("{scheme}[{}]", scopes.join(",")),
        });
        schemes.collect::<Vec<_>>().join(" + ")
    };
    alternatives
        .iter()
        .map(show_one)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A scheme without its description, to tell a real change from a documentation one.
fn without_description(scheme: &ReferenceOr<SecurityScheme>) -> serde_json::Value {
    let mut value = serde_json::to_value(scheme).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("description");
    }
    value
}

impl Diff<'_> {
    pub(super) fn operation_security(&mut self, at: &str, old: &Operation, new: &Operation) {
        let old = alternatives(self.old, old);
        let new = alternatives(self.new, new);
        for lost in unmet(&old, &new) {
            let detail = format!("{} -> {}", show(std::slice::from_ref(lost)), show(&new));
            self.report(Rule::SecurityRequirementAdded, at, detail);
        }
        for gained in unmet(&new, &old) {
            let detail = format!("{} -> {}", show(&old), show(std::slice::from_ref(gained)));
            self.report(Rule::SecurityRequirementRemoved, at, detail);
        }
    }

    pub(super) fn security_schemes(&mut self) {
        let old: Vec<_> = self
            .old
            .components
            .iter()
            .flat_map(|c| &c.security_schemes)
            .collect();
        let new: Vec<_> = self
            .new
            .components
            .iter()
            .flat_map(|c| &c.security_schemes)
            .collect();
        for &(name, old_scheme) in &old {
            let at = format!("security scheme {name}");
            let Some((_, new_scheme)) = new.iter().find(|(n, _)| *n == name) else {
                self.report(Rule::SecuritySchemeRemoved, at, "");
                continue;
            };
            let (old_value, new_value) = (
                without_description(old_scheme),
                without_description(new_scheme),
            );
            if old_value != new_value {
                self.report(
                    Rule::SecuritySchemeChanged,
                    at,
                    format!("{old_value} -> {new_value}"),
                );
            } else if old_scheme != *new_scheme {
                self.report(Rule::DocsChanged, at, "description");
            }
        }
        for &(name, _) in &new {
            if !old.iter().any(|(n, _)| *n == name) {
                self.report(
                    Rule::SecuritySchemeAdded,
                    format!("security scheme {name}"),
                    "",
                );
            }
        }
    }
}
