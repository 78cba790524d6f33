//! Bounds on what callers can make grow, one request at a time (OWASP API4): past them a
//! request is refused with 409 and a stable code, and nothing changes. Strings, lists and page
//! sizes are bounded by the spec's schemas; these are the bounds only the service can count.

/// Subscribers one thread may have, removed (archived) ones included: a thread embeds all of
/// them (`subscribers`), and its channel's name and membership are made of the active ones.
/// Past it: 409 `too_many_subscribers`.
pub const MAX_SUBSCRIBERS_PER_THREAD: u64 = 100;

/// Distinct emoji one subscriber may have on one message. Past it: 409 `too_many_reactions`.
pub const MAX_REACTIONS_PER_SUBSCRIBER: u64 = 20;
