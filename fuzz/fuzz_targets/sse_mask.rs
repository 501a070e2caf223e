//! Response masking of Server-Sent Events and JSON lines as the HTTP guard
//! does it: the output must not depend on where the network cut the stream
//! (a value split across writes is masked whole). The first byte picks the
//! class and the chunk size. JSON documents also go through the tree masker.
//! The body's text is also streamed as OpenAI chat deltas, a few bytes per
//! event: the joined delta text that comes out must be the text masked
//! whole, however the events and the writes were cut.
#![no_main]

use std::sync::LazyLock;

use agentguard::http::mask::{self, Class, EventMasker};
use agentguard_mask::{Engine, FieldContext, MaskConfig, Selection};
use libfuzzer_sys::fuzz_target;

static ENGINE: LazyLock<(Engine, Selection)> = LazyLock::new(|| {
    let engine = Engine::new(&MaskConfig::default()).expect("default engine");
    let sel = engine.default_selection().clone();
    (engine, sel)
});

fn run(
    engine: &Engine,
    sel: &Selection,
    class: Class,
    chunks: &mut dyn Iterator<Item = &[u8]>,
) -> Vec<u8> {
    let mut m = EventMasker::new(engine, sel, class);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(m.push(c));
    }
    out.extend(m.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (engine, sel) = &*ENGINE;
    let class = if pick & 1 == 0 {
        Class::EventStream
    } else {
        Class::Lines
    };
    let whole = run(engine, sel, class, &mut std::iter::once(body));
    let cut = run(
        engine,
        sel,
        class,
        &mut body.chunks(usize::from(pick >> 1) % 32 + 1),
    );
    assert_eq!(whole, cut, "masking depends on chunking");
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
        let mut findings = Vec::new();
        mask::mask_json(
            engine,
            sel,
            &mut v,
            None,
            &mut String::from("$"),
            &mut findings,
        );
        let _ = serde_json::to_vec(&v).expect("a masked tree serializes");
    }
    chat_deltas(engine, sel, pick, body);
});

/// `body` as the content of chat completion chunks of 1..=8 characters,
/// ended by `[DONE]`.
fn chat_deltas(engine: &Engine, sel: &Selection, pick: u8, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    let chars: Vec<char> = text.chars().collect();
    let mut stream = Vec::new();
    for token in chars.chunks(usize::from(pick >> 5) + 1) {
        let token = String::from_iter(token);
        let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": token}}]});
        stream.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    stream.extend_from_slice(b"data: [DONE]\n\n");
    let whole = run(
        engine,
        sel,
        Class::EventStream,
        &mut std::iter::once(&stream[..]),
    );
    let cut = run(
        engine,
        sel,
        Class::EventStream,
        &mut stream.chunks(usize::from(pick % 32) + 1),
    );
    assert_eq!(whole, cut, "delta masking depends on chunking");
    let out = String::from_utf8(whole).expect("UTF-8 out");
    let mut joined = String::new();
    for ev in out.split_terminator("\n\n") {
        let data = ev.strip_prefix("data: ").expect("data line kept");
        if data == "[DONE]" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("chunk stays JSON");
        joined += v["choices"][0]["delta"]["content"]
            .as_str()
            .expect("content kept");
    }
    let want = engine.mask_value(&text, &FieldContext::text(), sel).value;
    assert_eq!(
        joined, want,
        "joined deltas differ from the text masked whole"
    );
}
