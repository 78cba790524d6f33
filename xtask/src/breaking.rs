//! `cargo xtask breaking [--base <git-ref> | --base-file <path>]`: compares
//! `openapi/messaging.yaml` in the working tree with a base version (by default the one at
//! `HEAD`) and reports every change that breaks existing callers or code built on the
//! generated client, one line each: `breaking  <rule>  <location> (<detail>)`. Additive
//! changes are listed as `info` lines. Exit status: 0 nothing breaking, 1 something breaking,
//! 2 the comparison could not run (unknown ref, unparsable spec, dangling `$ref`).
//!
//! Operations are matched by method and path (path parameter names do not count), parameters
//! by name and `in`, responses by status. Schemas are compared through their `$ref`s, once per
//! place they are used, with a direction ([`rules::Direction`]): parameters and request bodies
//! break when they get stricter, responses when they get looser. What breaks:
//!
//! - an operation removed, its operationId changed (it names the client's method);
//! - a parameter removed, added as required, made required, moved to another `in`;
//! - a request body removed, added as required or made required; a request media type removed;
//! - in a parameter or request schema (`parameter-*`, `request-*`): a property removed (always:
//!   the generated client loses the field, and a server that ignores unknown fields would
//!   silently drop the value), added as required or made required; a type or format changed;
//!   an enum value removed; a constraint tightened (maxLength, maximum, maxItems lowered,
//!   minLength, minimum, minItems raised, a pattern added or changed, `additionalProperties:
//!   false` added); `nullable` removed; a `oneOf`/`anyOf` alternative removed;
//! - a success status removed or changed (`200` became `201`); a response media type or
//!   header removed;
//! - in a response schema (`response-*`): a property removed or no longer required; a type or
//!   format changed; `nullable` added; an enum value added (the generated client's enums
//!   reject unknown values); a constraint relaxed (the client validates constrained strings);
//!   an alternative added;
//! - a security requirement added to an operation (a caller's credentials no longer suffice);
//!   a security scheme removed or changed.
//!
//! A type change includes an `enum` appearing or disappearing: either changes the generated
//! type. Everything else (new operations, optional parameters and properties, new response
//! fields, relaxed request constraints, error statuses removed, documentation) is `info`.

mod operations;
mod resolve;
mod rules;
mod schemas;
mod security;
mod shape;
#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use openapiv3::{OpenAPI, ReferenceOr, Schema};

use crate::codegen::SPEC_PATH;
use rules::{Direction, Finding, Rule};

/// The version of the spec to compare the working tree's with.
#[derive(Debug)]
pub enum Base {
    /// `git show <ref>:openapi/messaging.yaml`.
    Git(String),
    File(PathBuf),
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base::Git(reference) => f.write_str(reference),
            Base::File(path) => write!(f, "{}", path.display()),
        }
    }
}

pub fn run(root: &Path, base: &Base) -> ExitCode {
    match check(root, base) {
        Ok(findings) => print_report(&findings, base),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn check(root: &Path, base: &Base) -> anyhow::Result<Vec<Finding>> {
    let new = std::fs::read_to_string(root.join(SPEC_PATH))
        .with_context(|| format!("reading {SPEC_PATH}"))?;
    let old = read_base(root, base)?;
    let old: OpenAPI = serde_yaml::from_str(&old).with_context(|| match base {
        Base::Git(reference) => format!("parsing {SPEC_PATH} at `{reference}`"),
        Base::File(path) => format!("parsing {}", path.display()),
    })?;
    let new: OpenAPI = serde_yaml::from_str(&new)
        .with_context(|| format!("parsing {SPEC_PATH} in the working tree"))?;
    compare(&old, &new)
}

fn read_base(root: &Path, base: &Base) -> anyhow::Result<String> {
    match base {
        Base::File(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        Base::Git(reference) => {
            let output = std::process::Command::new("git")
                .arg("show")
                .arg(format!("{reference}:{SPEC_PATH}"))
                .current_dir(root)
                .output()
                .with_context(|| format!("running git show {reference}:{SPEC_PATH}"))?;
            if !output.status.success() {
                bail!(
                    "cannot read {SPEC_PATH} at `{reference}`: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            String::from_utf8(output.stdout)
                .with_context(|| format!("{SPEC_PATH} at `{reference}` is not UTF-8"))
        }
    }
}

fn print_report(findings: &[Finding], base: &Base) -> ExitCode {
    let (breaking, info): (Vec<_>, Vec<_>) = findings.iter().partition(|f| f.is_breaking());
    for finding in breaking.iter().chain(&info) {
        println!("{finding}");
    }
    let also = match info.len() {
        0 => String::new(),
        n => format!(" ({n} non-breaking listed as info)"),
    };
    if breaking.is_empty() {
        println!("no breaking changes against {base}{also}");
        return ExitCode::SUCCESS;
    }
    let count = breaking.len();
    let s = if count == 1 { "" } else { "s" };
    println!("\n{count} breaking change{s} against {base}{also}");
    println!(
        "hint: make the change additive (new optional parameters or properties, new operations, \
         new response fields), or, if the break is deliberate, bump the API version (info.version \
         and new /v2 paths) so existing callers keep the old contract"
    );
    ExitCode::FAILURE
}

/// Every difference between the `old` and the `new` spec, breaking or not.
pub fn compare(old: &OpenAPI, new: &OpenAPI) -> anyhow::Result<Vec<Finding>> {
    let mut diff = Diff {
        old,
        new,
        findings: Vec::new(),
    };
    if old.info.version != new.info.version {
        let detail = format!("{} -> {}", old.info.version, new.info.version);
        diff.report(Rule::ApiVersionChanged, "info.version", detail);
    }
    diff.operations()?;
    diff.security_schemes();
    Ok(diff.findings)
}

/// The two specs being compared and what was found so far. The comparison of operations
/// (`operations.rs`) and of security (`security.rs`) add methods.
struct Diff<'a> {
    old: &'a OpenAPI,
    new: &'a OpenAPI,
    findings: Vec<Finding>,
}

impl<'a> Diff<'a> {
    fn report(&mut self, rule: Rule, location: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            rule,
            location: location.into(),
            detail: detail.into(),
        });
    }

    /// Compares a parameter's, request body's or response's schema; `location` names it.
    fn schema<S: Borrow<Schema>, T: Borrow<Schema>>(
        &mut self,
        direction: Direction,
        location: &str,
        old: &'a ReferenceOr<S>,
        new: &'a ReferenceOr<T>,
    ) -> anyhow::Result<()> {
        for change in schemas::compare((self.old, self.new), direction, old, new)? {
            let location = if change.path.is_empty() {
                location.to_owned()
            } else {
                format!("{location}: {}", change.path)
            };
            self.report(
                Rule::Schema(direction, change.change),
                location,
                change.detail,
            );
        }
        Ok(())
    }
}
