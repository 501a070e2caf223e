//! The streaming masker (agentguard-mask) against its promise: however a
//! body is cut into chunks, the output is byte-for-byte what masking the
//! whole body at once gives. The first byte picks the chunk size.
#![no_main]

use std::sync::LazyLock;

use agentguard_mask::{Engine, FieldContext, MaskConfig, Selection};
use libfuzzer_sys::fuzz_target;

static ENGINE: LazyLock<(Engine, Selection)> = LazyLock::new(|| {
    let engine = Engine::new(&MaskConfig::default()).expect("default engine");
    let sel = engine.default_selection().clone();
    (engine, sel)
});

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let (engine, sel) = &*ENGINE;
    let ctx = FieldContext::text();
    let whole = engine.mask_bytes(body, &ctx, sel);
    let mut stream = engine.stream(&ctx, sel);
    let mut out = Vec::new();
    for chunk in body.chunks(usize::from(cut % 64) + 1) {
        out.extend(stream.push(chunk));
    }
    out.extend(stream.finish());
    assert_eq!(
        out,
        whole.value.as_ref(),
        "streamed and whole masking differ"
    );
});
