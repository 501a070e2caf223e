//! Masking a value that arrives in chunks.
//!
//! The masker holds back the last [`MAX_ENTITY_LEN`](crate::MAX_ENTITY_LEN)
//! bytes of what it has seen (more while a PEM block or JWT is open, up to
//! [`MAX_LONG_ENTITY`](crate::MAX_LONG_ENTITY)), so a value split across
//! chunks is found whole. The concatenated output of `push`es and `finish`
//! is byte-for-byte what [`Engine::mask_bytes`] gives for the whole value.
//! The price is latency: bytes leave only once enough follow them, or at
//! `finish` (an SSE proxy calls `finish` at each event's end).

use std::sync::Arc;

use crate::context::Words;
use crate::detect::NEAR;
use crate::engine::{Engine, FieldContext, Finding};
use crate::select::Selection;
use crate::strategy::Strategy;

/// Already-emitted bytes kept in front of the pending ones: the regex's
/// look-behind and the context words read them.
const KEEP: usize = NEAR + 16;

pub struct StreamMasker<'e> {
    engine: &'e Engine,
    sel: &'e Selection,
    field: Words,
    kind: crate::FieldKind,
    name: Option<String>,
    path: Option<String>,
    /// A rule masks the whole value: buffer it all, mask at `finish`.
    whole: Option<(Arc<str>, Strategy)>,
    /// `buf[..kept]` was emitted already (context only); the rest is pending.
    buf: Vec<u8>,
    kept: usize,
    /// End of the last hit in `buf` (context words are read after it).
    floor: usize,
    findings: Vec<Finding>,
}

impl<'e> StreamMasker<'e> {
    pub(crate) fn new(engine: &'e Engine, ctx: &FieldContext, sel: &'e Selection) -> Self {
        StreamMasker {
            engine,
            sel,
            field: ctx.words(),
            kind: ctx.kind,
            name: ctx.name.map(str::to_owned),
            path: ctx.path.map(str::to_owned),
            whole: engine.whole_rule(ctx, sel),
            buf: Vec::new(),
            kept: 0,
            floor: 0,
            findings: Vec::new(),
        }
    }

    fn ctx(&self) -> FieldContext<'_> {
        FieldContext {
            kind: self.kind,
            name: self.name.as_deref(),
            path: self.path.as_deref(),
        }
    }

    /// Feeds a chunk; returns the masked bytes that are final now (possibly
    /// none).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        if self.whole.is_some() {
            return Vec::new();
        }
        self.advance(false)
    }

    /// Ends the value; returns the rest of the masked bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        if let Some((label, strategy)) = self.whole.clone() {
            let value = std::mem::take(&mut self.buf);
            let ctx = self.ctx();
            let m = self.engine.mask_whole(&value, &ctx, label, strategy);
            self.findings.extend(m.findings);
            return m.value.into_owned();
        }
        self.advance(true)
    }

    /// Bytes pushed whose masked form has not been returned yet (the held
    /// tail): what a caller needs to map output back to input offsets.
    pub fn held(&self) -> usize {
        self.buf.len() - self.kept
    }

    /// What was masked so far (entity, count, where), merged across chunks.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    fn advance(&mut self, eof: bool) -> Vec<u8> {
        let engine = self.engine;
        let pending = &self.buf[self.kept..];
        let mut out = Vec::new();
        let end = if !self.sel.any_detector() || !engine.scanner.may_match(pending) {
            // Nothing can start in the pending bytes: everything but the
            // held tail is final as it is (a candidate starting before the
            // tail lies wholly in the buffer, so the prefilter would see it).
            let end = if eof {
                self.buf.len()
            } else {
                self.buf
                    .len()
                    .saturating_sub(engine.scanner.hold())
                    .max(self.kept)
            };
            out.extend_from_slice(&self.buf[self.kept..end]);
            end
        } else {
            let mut hits = Vec::new();
            let cx = engine.scan_ctx(self.sel, &self.field);
            let cut = engine
                .scanner
                .scan(&self.buf, self.kept, self.floor, eof, &cx, &mut hits);
            if let Some(last) = hits.last() {
                self.floor = last.span.end;
            }
            let ctx = FieldContext {
                kind: self.kind,
                name: self.name.as_deref(),
                path: self.path.as_deref(),
            };
            engine.render(
                &self.buf,
                self.kept,
                cut,
                &hits,
                self.sel,
                &ctx,
                &mut out,
                &mut self.findings,
            )
        };
        // Keep a little emitted context, drop the rest.
        let keep_from = end.saturating_sub(KEEP);
        self.buf.drain(..keep_from);
        self.kept = end - keep_from;
        self.floor = self.floor.saturating_sub(keep_from);
        out
    }
}
