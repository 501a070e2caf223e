#![no_std]
//! The programs live in main.rs (built for bpfel-unknown-none by agentguard's
//! build.rs). This empty library lets agentguard depend on this crate, so
//! cargo rebuilds agentguard when it changes.
