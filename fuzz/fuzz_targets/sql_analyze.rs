//! Any SQL text an agent can send, through the analysis policy reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sql) = std::str::from_utf8(data) {
        let a = agentguard::pg::sql::analyze(sql);
        // Policy gets either statements or a parse error, never neither
        // for text with something in it.
        if a.parse_error.is_none() {
            let _ = serde_json::to_string(&a).expect("analysis serializes");
        }
    }
});
