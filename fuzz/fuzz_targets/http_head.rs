//! An agent's first bytes on an HTTP target: protocol detection, the TLS
//! ClientHello walk (SNI, ALPN), and, for a request head, what the guard
//! derives from it (Kubernetes verb/resource, LLM provider, redacted
//! headers, body and response classes).
#![no_main]

use agentguard::http::{detect, input, k8s, mask};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = detect::classify(data);
    if let Ok(Some(hello)) = detect::parse_client_hello(data) {
        let _ = format!("{hello:?}");
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let _ = k8s::derive(method, path, query);
    let _ = input::llm_provider(path);
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            map.append(name, value);
        }
    }
    let redacted = input::redacted_headers(&map);
    if let Some(value) = redacted.get("authorization") {
        // Credentials never reach policy or a log as they were.
        assert!(value.ends_with("[redacted]"), "authorization kept: {value}");
    }
    let ct = map
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let _ = input::is_json(ct);
    let _ = mask::classify(&map);
    let _ = mask::encoding(&map);
});
