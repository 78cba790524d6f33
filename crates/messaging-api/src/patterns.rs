//! `pattern` validation that compiles each regular expression once per process.
//!
//! poem-openapi 5.1's `validation::Pattern` compiles its pattern on every check
//! (`Regex::new(pattern).unwrap().is_match(value)`, in `poem-openapi/src/validation/pattern.rs`).
//! With the spec's Unicode classes (a message's text, a thread id in the path), building those
//! automata was a third of the CPU of `cargo bench-api` under sendMessage (client and server in
//! one process, so more than that of the server's own).
//!
//! The generated code names poem-openapi through [`poem_openapi`] below
//! (`use crate::patterns::poem_openapi;`), and the derive macros write their paths from that name
//! as it resolves where they expand. It is the real crate with one item replaced:
//! `validation::Pattern` is this module's [`Pattern`], which compiles each pattern the first time
//! it is checked and keeps it. The schema (`pattern`) and the error message are the same as
//! poem-openapi's. Drop this module when poem-openapi caches its patterns itself.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, LazyLock, RwLock},
};

use ::poem_openapi::{registry::MetaSchema, validation::ValidatorMeta};
use regex::Regex;

/// poem-openapi as the generated code sees it: the crate, with [`Pattern`] as its
/// `validation::Pattern`.
pub mod poem_openapi {
    pub use ::poem_openapi::*;

    /// poem-openapi's validators, with [`Pattern`](super::Pattern) compiling once.
    pub mod validation {
        pub use super::super::Pattern;
        pub use ::poem_openapi::validation::*;
    }
}

/// A `pattern` validator whose regular expression is compiled once per process.
pub struct Pattern {
    pattern: &'static str,
    regex: Arc<Regex>,
}

/// Every pattern checked so far, compiled. The patterns are the spec's, written into the code,
/// so the map stops growing after each has been checked once.
static COMPILED: LazyLock<RwLock<HashMap<&'static str, Arc<Regex>>>> =
    LazyLock::new(RwLock::default);

impl Pattern {
    /// The validator for `pattern`, compiled on its first use.
    ///
    /// # Panics
    /// When `pattern` is not a valid regular expression; poem-openapi's derive macros refuse
    /// such a pattern at compile time.
    pub fn new(pattern: &'static str) -> Self {
        let known = COMPILED
            .read()
            .expect("the pattern map's lock is never poisoned")
            .get(pattern)
            .cloned();
        let regex = known.unwrap_or_else(|| {
            COMPILED
                .write()
                .expect("the pattern map's lock is never poisoned")
                .entry(pattern)
                .or_insert_with(|| {
                    Arc::new(Regex::new(pattern).expect("the derive checked the pattern"))
                })
                .clone()
        });
        Self { pattern, regex }
    }

    /// Whether `pattern` has been compiled (checked at least once) in this process.
    #[cfg(test)]
    fn is_compiled(pattern: &str) -> bool {
        COMPILED
            .read()
            .expect("the pattern map's lock is never poisoned")
            .contains_key(pattern)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern(\"{}\")", self.pattern)
    }
}

impl<T: AsRef<str>> ::poem_openapi::validation::Validator<T> for Pattern {
    fn check(&self, value: &T) -> bool {
        self.regex.is_match(value.as_ref())
    }
}

impl ValidatorMeta for Pattern {
    fn update_meta(&self, meta: &mut MetaSchema) {
        meta.pattern = Some(self.pattern.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use ::poem_openapi::{
        registry::MetaSchema,
        types::ParseFromJSON,
        validation::{Validator, ValidatorMeta},
    };

    use super::Pattern;
    use crate::SendMessageRequest;

    /// Checks, messages and schema as poem-openapi's own validator gives them.
    #[test]
    fn checks_and_describes_like_poem_openapi() {
        let pattern = r"^\+[1-9][0-9]{1,14}$";
        let ours = Pattern::new(pattern);
        let theirs = ::poem_openapi::validation::Pattern::new(pattern);
        for value in ["+4915112345678", "0049151", "+0", "", "+1234567890123456"] {
            assert_eq!(ours.check(&value), theirs.check(&value), "{value}");
        }
        assert_eq!(ours.to_string(), theirs.to_string());
        let (mut a, mut b) = (MetaSchema::ANY, MetaSchema::ANY);
        ours.update_meta(&mut a);
        theirs.update_meta(&mut b);
        assert_eq!(a.pattern, b.pattern);
    }

    /// The generated types validate through this module's `Pattern`: reading a request body
    /// compiles its field's pattern here, and a value the pattern refuses is still refused.
    #[test]
    fn generated_types_use_the_compiled_patterns() {
        let message_pattern =
            r"[^\x09-\x0d\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
        let read = |text: &str| {
            SendMessageRequest::parse_from_json(Some(serde_json::json!({ "message": text })))
        };
        assert!(read("hello").is_ok());
        assert!(
            Pattern::is_compiled(message_pattern),
            "the derive went around the compiled patterns"
        );
        let refused = read(" \u{3000} ").expect_err("blank text matches no character");
        assert!(
            refused.message().contains("verification failed"),
            "{}",
            refused.message()
        );
    }
}
