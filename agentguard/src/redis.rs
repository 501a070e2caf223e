//! The Redis guard: RESP2 and RESP3 both ways, a policy decision per
//! command (pipelined, in order), `-NOPERM` refusals in the reply's place,
//! and masking of string values in replies.
//!
//! Files in the order a connection meets them: `codec.rs` (framing),
//! `request.rs` (what a command asks, for policy), `session.rs` (the
//! command loop, transactions, pub/sub).

pub mod codec;
pub mod request;
pub mod session;

pub use request::RedisRequest;
