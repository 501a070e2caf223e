//! What an agent (the PostgreSQL frontend) can send the guard: the startup
//! packet, then messages, each taken apart as the session does.
#![no_main]

use agentguard::pg::codec::{self, tag};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // The startup phase reads until a startup packet (SSL/GSS requests are
    // answered and skipped).
    loop {
        match codec::decode_startup(&mut buf) {
            Ok(Some(codec::Startup::Startup { .. })) => break,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
    while let Ok(Some(msg)) = codec::decode(&mut buf, 1 << 20) {
        assert!(msg.body().len() < 1 << 20);
        let _ = match msg.tag() {
            tag::QUERY => codec::query_text(&msg).map(drop),
            tag::PARSE => codec::parse_message(&msg).map(drop),
            tag::BIND => codec::bind_names(&msg)
                .map(drop)
                .and_then(|()| codec::bind_result_formats(&msg).map(drop)),
            tag::DESCRIBE | tag::CLOSE => codec::target_name(&msg).map(drop),
            tag::EXECUTE => codec::execute_portal(&msg).map(drop),
            _ => Ok(()),
        };
    }
});
