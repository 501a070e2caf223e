//! What either side of a MySQL connection can send the guard: the bytes
//! as packets (split ones joined), each read as a greeting, a handshake
//! response, a column definition, an OK / ERR, and a text and binary row
//! (rows re-encoded with every value replaced, as masking does, which must
//! decode again to the same shape); and as SQL for the policy request.
#![no_main]

use agentguard::mysql::{
    MysqlRequest,
    codec::{self, BinValue, MAX_PACKET},
    request,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(p)) = codec::decode(&mut buf, MAX_PACKET) {
        // Framing round trip: the payload re-framed decodes to itself.
        let mut out = BytesMut::new();
        let next = codec::encode(&mut out, p.seq, &p.payload);
        let again = codec::decode(&mut out, MAX_PACKET)
            .expect("re-framed packet decodes")
            .expect("re-framed packet is whole");
        assert_eq!(again.payload, p.payload);
        assert_eq!(again.next_seq(), next);
        let payload = &p.payload[..];
        if let Ok(g) = codec::parse_greeting(payload, codec::cap::SSL) {
            assert_eq!(g.adjusted.len(), payload.len());
        }
        let _ = codec::parse_handshake_response(payload);
        let _ = codec::parse_change_user(payload, u32::MAX);
        let _ = codec::parse_ok(payload);
        let _ = codec::parse_err(payload);
        let _ = codec::eof_status(payload, true);
        let _ = codec::parse_column(payload);
        for n in 0..4 {
            if let Some(values) = codec::text_row(payload, n) {
                let row = codec::build_text_row(values.iter().map(|v| v.as_ref().map(|_| &b"[x]"[..])));
                let back = codec::text_row(&row, n).expect("a rebuilt text row decodes");
                assert_eq!(back.len(), n);
            }
        }
        let types: Vec<u8> = payload.iter().take(3).copied().collect();
        if let Some(values) = codec::binary_row(payload, &types) {
            let replaced: Vec<_> = values
                .iter()
                .map(|v| matches!(v, BinValue::Str(_)).then(|| Some(b"[x]".to_vec())))
                .collect();
            let row = codec::build_binary_row(payload, &values, &replaced);
            let back = codec::binary_row(&row, &types).expect("a rebuilt binary row decodes");
            assert_eq!(back.len(), values.len());
        }
        let sql = String::from_utf8_lossy(payload.get(1..).unwrap_or_default()).into_owned();
        let analysis = request::analyze(&sql);
        let _ = MysqlRequest::new("query", sql, analysis).summary().line();
    }
});
