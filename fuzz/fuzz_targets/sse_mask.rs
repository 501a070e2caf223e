//! Response masking of Server-Sent Events and JSON lines as the HTTP guard
//! does it: the output must not depend on where the network cut the stream
//! (a value split across writes is masked whole). The first byte picks the
//! class and the chunk size. JSON documents also go through the tree masker.
#![no_main]

use std::sync::LazyLock;

use agentguard::http::mask::{self, Class, EventMasker};
use agentguard_mask::{Engine, MaskConfig, Selection};
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
});
