//! The PostgreSQL guard: wire protocol v3 both ways, a policy decision per
//! statement, clean refusals the client understands, and masking of rows.
//!
//! Files in the order a connection meets them: `codec.rs` (framing),
//! `session.rs` (startup, auth pass-through, the query loop), `auth.rs` (the
//! upstream login when the guard holds the credential), `sql.rs` (what a
//! statement does, for policy).

pub mod auth;
pub mod codec;
pub mod session;
pub mod sql;

pub use session::SqlRequest;
