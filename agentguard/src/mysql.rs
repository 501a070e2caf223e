//! The MySQL / MariaDB guard: the client/server protocol both ways, a
//! policy decision per command (each statement of a COM_QUERY, prepared
//! statements at prepare and execute, LOAD DATA LOCAL's file request),
//! ERR-packet refusals in the reply's place, and masking of text and
//! binary result rows.
//!
//! Files in the order a connection meets them: `codec.rs` (framing,
//! handshake, rows), `request.rs` (what a command asks, for policy; the
//! SQL analysis is PostgreSQL's, with MySQL's dialect), `session.rs` (the
//! handshake, auth pass-through and the command loop), `auth.rs` (the
//! guard's own login when it holds the credential).

pub mod auth;
pub mod codec;
pub mod request;
pub mod session;

pub use request::MysqlRequest;
