//! LLM delta text joined across Server-Sent Events.
//!
//! An LLM streams its reply a few tokens per event, so an email or a card
//! number is usually split across events and masking each event alone
//! misses it. For the event shapes in [`SHAPES`], the delta text of each
//! stream (a chat choice, a content block, a Responses output part) goes
//! through one [`StreamMasker`], and each event gets back the masked text
//! for its own part, in place of its delta string.
//!
//! The trade-off: the masker releases text only once
//! [`MAX_ENTITY_LEN`](agentguard_mask::MAX_ENTITY_LEN) bytes follow it (or
//! its stream ends), since until then a later token could still complete
//! an entity. An event therefore waits until its text is final, and the
//! events after it wait behind it (their order is kept). Holding whole
//! events rather than text keeps every event as it came, byte for byte,
//! when nothing in it is masked: no event is emptied and none is made up.
//! Everything else in an event is masked as text, as for any other event.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ops::Range,
};

use agentguard_mask::{Engine, FieldContext, Selection, StreamMasker};
use serde_json::value::RawValue;

use super::note;

/// Text streams followed at once; an event for one more is masked alone.
const MAX_LANES: usize = 64;
/// Bytes of events waiting for their text; past this every stream is ended
/// (its held text released), so one stalled stream cannot hold the rest.
const MAX_QUEUED: usize = 4 << 20;

/// Where one kind of event carries delta text, and what ends its stream.
struct Shape {
    /// The data's `"type"`; `None`: it has none (chat completion chunks).
    kind: Option<&'static str>,
    /// An array of items, each with its own text (chat: `choices`);
    /// `None`: the data is the one item.
    items: Option<&'static str>,
    /// The item's fields that, with the shape, name one text stream
    /// (`""`: unused).
    index: [&'static str; 2],
    /// The path to the delta string within an item (`""`: a shorter one).
    text: [&'static str; 2],
    /// A field of the item whose non-null value ends its stream.
    finish: Option<&'static str>,
    /// The `"type"` of the event that ends one stream (same index fields).
    ends: Option<&'static str>,
}

const fn chat(text: &'static str) -> Shape {
    Shape {
        kind: None,
        items: Some("choices"),
        index: ["index", ""],
        text: ["delta", text],
        finish: Some("finish_reason"),
        ends: None,
    }
}

const fn anthropic(text: &'static str) -> Shape {
    Shape {
        kind: Some("content_block_delta"),
        items: None,
        index: ["index", ""],
        text: ["delta", text],
        finish: None,
        ends: Some("content_block_stop"),
    }
}

const fn responses(kind: &'static str, part: &'static str, ends: &'static str) -> Shape {
    Shape {
        kind: Some(kind),
        items: None,
        index: ["output_index", part],
        text: ["delta", ""],
        finish: None,
        ends: Some(ends),
    }
}

/// The delta-text shapes recognised. A new one is a row here.
const SHAPES: &[Shape] = &[
    // OpenAI chat completions (and the many servers that copy them).
    chat("content"),
    chat("reasoning_content"),
    chat("refusal"),
    // Anthropic messages.
    anthropic("text"),
    anthropic("thinking"),
    // OpenAI Responses.
    responses(
        "response.output_text.delta",
        "content_index",
        "response.output_text.done",
    ),
    responses(
        "response.refusal.delta",
        "content_index",
        "response.refusal.done",
    ),
    responses(
        "response.reasoning_summary_text.delta",
        "summary_index",
        "response.reasoning_summary_text.done",
    ),
];

/// Event types that end every stream (OpenAI's `data: [DONE]` too).
const END_ALL: &[&str] = &[
    "message_stop",
    "error",
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// One text stream: (row in [`SHAPES`], index fields).
type Key = (usize, [u64; 2]);

/// One text stream's masker and the text not yet handed to events.
struct Lane<'e> {
    masker: StreamMasker<'e>,
    /// Input bytes fed so far.
    fed: usize,
    /// Input offset where `inp` and `out` start: the end of the last event
    /// given its text.
    base: usize,
    /// Input text from `base`.
    inp: Vec<u8>,
    /// Masked output from `base`, for input up to [`Lane::released`].
    out: Vec<u8>,
    open: bool,
    /// Queued events with text from this lane.
    waiting: usize,
}

impl Lane<'_> {
    /// Input offset up to which the masked output is final.
    fn released(&self) -> usize {
        self.fed - self.masker.held()
    }
}

enum Part {
    /// Bytes ready to go (already masked).
    Raw(Vec<u8>),
    /// A delta string: filled in once its lane has released input up to
    /// `end`. `literal` is the JSON string as it came, kept when the text
    /// is unchanged.
    Text {
        lane: u64,
        end: usize,
        literal: Vec<u8>,
        text: String,
    },
}

/// What an event's data says about the text streams.
#[derive(Default)]
struct Recognised {
    /// (stream, span of the JSON string in the data, its text).
    texts: Vec<(Key, Range<usize>, String)>,
    ends: Vec<Key>,
    end_all: bool,
}

/// The delta-text side of an event-stream masker: every event goes through
/// its queue, in order.
pub(super) struct Deltas<'e> {
    engine: &'e Engine,
    sel: &'e Selection,
    lanes: HashMap<u64, Lane<'e>>,
    open: HashMap<Key, u64>,
    next: u64,
    queue: VecDeque<Vec<Part>>,
    queued: usize,
}

impl<'e> Deltas<'e> {
    pub(super) fn new(engine: &'e Engine, sel: &'e Selection) -> Self {
        Self {
            engine,
            sel,
            lanes: HashMap::new(),
            open: HashMap::new(),
            next: 0,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Queues bytes that are final as they are.
    pub(super) fn raw(&mut self, bytes: Vec<u8>) {
        self.enqueue(vec![Part::Raw(bytes)]);
    }

    /// Masks one event: its delta strings through their streams, the rest
    /// as text.
    pub(super) fn event(&mut self, unit: &[u8], findings: &mut BTreeMap<String, u32>) {
        let mut parts = Vec::new();
        let mut at = 0;
        let mut rec = Recognised::default();
        if let Some(r) = data_range(unit)
            && let Ok(data) = std::str::from_utf8(&unit[r.clone()])
        {
            rec = recognise(data);
            rec.texts.sort_by_key(|(_, span, _)| span.start);
            for (key, span, text) in std::mem::take(&mut rec.texts) {
                let span = r.start + span.start..r.start + span.end;
                if span.start < at || span.end > unit.len() {
                    continue;
                }
                // Over the cap: the string stays in the part masked alone.
                let Some(lane) = self.lane(key) else { continue };
                parts.push(Part::Raw(self.mask(&unit[at..span.start], findings)));
                let end = self.feed(lane, text.as_bytes());
                parts.push(Part::Text {
                    lane,
                    end,
                    literal: unit[span.clone()].to_vec(),
                    text,
                });
                at = span.end;
            }
        }
        parts.push(Part::Raw(self.mask(&unit[at..], findings)));
        self.enqueue(parts);
        for key in rec.ends {
            self.close(key, findings);
        }
        if rec.end_all || self.queued > MAX_QUEUED {
            self.close_all(findings);
        }
    }

    /// The body ended: every stream ends.
    pub(super) fn close_all(&mut self, findings: &mut BTreeMap<String, u32>) {
        let keys: Vec<Key> = self.open.keys().copied().collect();
        for key in keys {
            self.close(key, findings);
        }
    }

    /// Appends the events at the head of the queue whose text is final.
    pub(super) fn drain(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.queue.front() {
            let ready = front.iter().all(|p| match p {
                Part::Raw(_) => true,
                Part::Text { lane, end, .. } => {
                    self.lanes.get(lane).is_none_or(|l| l.released() >= *end)
                }
            });
            let Some(parts) = ready.then(|| self.queue.pop_front()).flatten() else {
                break;
            };
            for part in parts {
                match part {
                    Part::Raw(b) => {
                        self.queued -= b.len();
                        out.extend_from_slice(&b);
                    }
                    Part::Text {
                        lane,
                        end,
                        literal,
                        text,
                    } => {
                        self.queued -= literal.len();
                        let piece = self.take(lane, end);
                        if piece == text.as_bytes() {
                            out.extend_from_slice(&literal);
                        } else {
                            let s = String::from_utf8(piece).unwrap_or_else(|e| {
                                String::from_utf8_lossy(e.as_bytes()).into_owned()
                            });
                            let quoted =
                                serde_json::to_string(&s).unwrap_or_else(|_| "\"\"".to_owned());
                            out.extend_from_slice(quoted.as_bytes());
                        }
                    }
                }
            }
        }
    }

    fn enqueue(&mut self, parts: Vec<Part>) {
        for p in &parts {
            self.queued += match p {
                Part::Raw(b) => b.len(),
                Part::Text { literal, .. } => literal.len(),
            };
        }
        self.queue.push_back(parts);
    }

    fn mask(&self, bytes: &[u8], findings: &mut BTreeMap<String, u32>) -> Vec<u8> {
        let m = self
            .engine
            .mask_bytes(bytes, &FieldContext::text(), self.sel);
        note(findings, &m.findings);
        m.value.into_owned()
    }

    fn lane(&mut self, key: Key) -> Option<u64> {
        if let Some(&id) = self.open.get(&key) {
            return Some(id);
        }
        if self.open.len() >= MAX_LANES {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.open.insert(key, id);
        let lane = Lane {
            masker: self.engine.stream(&FieldContext::text(), self.sel),
            fed: 0,
            base: 0,
            inp: Vec::new(),
            out: Vec::new(),
            open: true,
            waiting: 0,
        };
        self.lanes.insert(id, lane);
        Some(id)
    }

    /// Feeds one event's text; returns the input offset where it ends.
    fn feed(&mut self, id: u64, text: &[u8]) -> usize {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return 0;
        };
        let released = lane.masker.push(text);
        lane.out.extend_from_slice(&released);
        lane.inp.extend_from_slice(text);
        lane.fed += text.len();
        lane.waiting += 1;
        lane.fed
    }

    /// Ends a stream: its held text is released to its last events.
    fn close(&mut self, key: Key, findings: &mut BTreeMap<String, u32>) {
        let Some(id) = self.open.remove(&key) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&id) else {
            return;
        };
        let rest = lane.masker.finish();
        lane.out.extend_from_slice(&rest);
        lane.open = false;
        note(findings, lane.masker.findings());
        if lane.waiting == 0 {
            self.lanes.remove(&id);
        }
    }

    /// The masked text of the lane's next event, which ends at input `end`.
    fn take(&mut self, id: u64, end: usize) -> Vec<u8> {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return Vec::new();
        };
        let window = lane
            .released()
            .saturating_sub(lane.base)
            .min(lane.inp.len());
        let k = end.saturating_sub(lane.base).min(window);
        let m = split_point(&lane.inp[..window], &lane.out, k);
        let piece: Vec<u8> = lane.out.drain(..m).collect();
        lane.inp.drain(..k);
        lane.base += k;
        lane.waiting = lane.waiting.saturating_sub(1);
        if !lane.open && lane.waiting == 0 {
            self.lanes.remove(&id);
        }
        piece
    }
}

/// Where `out`, the masked form of `inp`, splits to match input offset `k`
/// (a character boundary). Unchanged text splits where it did; text the
/// masker changed at the same length splits at the same offset; a
/// replacement of another length goes whole to the later event.
fn split_point(inp: &[u8], out: &[u8], k: usize) -> usize {
    let boundary = |i: usize| out.get(i).is_none_or(|&b| (b as i8) >= -0x40);
    let mut cp = inp.iter().zip(out).take_while(|(a, b)| a == b).count();
    while cp > 0 && !boundary(cp) {
        cp -= 1;
    }
    if k <= cp {
        return k;
    }
    let max_cs = inp.len().min(out.len()) - cp;
    let mut cs = inp
        .iter()
        .rev()
        .zip(out.iter().rev())
        .take_while(|(a, b)| a == b)
        .count()
        .min(max_cs);
    while cs > 0 && !boundary(out.len() - cs) {
        cs -= 1;
    }
    let after = inp.len() - k;
    if after <= cs {
        return out.len() - after;
    }
    if inp.len() == out.len() && boundary(k) {
        return k;
    }
    cp
}

/// The value of the event's one `data:` line (`None` if it has several,
/// which no delta shape uses).
fn data_range(unit: &[u8]) -> Option<Range<usize>> {
    let mut found = None;
    let mut at = 0;
    while at < unit.len() {
        let nl = unit[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(unit.len(), |p| at + p);
        let mut end = nl;
        if end > at && unit[end - 1] == b'\r' {
            end -= 1;
        }
        if unit[at..end].starts_with(b"data:") {
            if found.is_some() {
                return None;
            }
            let mut start = at + 5;
            if unit.get(start) == Some(&b' ') && start < end {
                start += 1;
            }
            found = Some(start..end);
        }
        at = nl + 1;
    }
    found
}

type Object<'a> = BTreeMap<String, &'a RawValue>;

fn object(v: &RawValue) -> Option<Object<'_>> {
    serde_json::from_str(v.get()).ok()
}

fn path<'a>(item: &Object<'a>, keys: &[&str]) -> Option<&'a RawValue> {
    let (first, rest) = keys.split_first()?;
    let mut cur = *item.get(*first)?;
    for k in rest.iter().filter(|k| !k.is_empty()) {
        cur = *object(cur)?.get(*k)?;
    }
    Some(cur)
}

fn index(item: &Object<'_>, shape: &Shape) -> [u64; 2] {
    shape.index.map(|name| {
        item.get(name)
            .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
            .unwrap_or(0)
    })
}

/// Reads an event's data against [`SHAPES`]. The spans are byte offsets in
/// `data` (the raw values borrow from it).
fn recognise(data: &str) -> Recognised {
    let mut rec = Recognised::default();
    if data.trim() == "[DONE]" {
        rec.end_all = true;
        return rec;
    }
    if !data.trim_start().starts_with('{') {
        return rec;
    }
    let Ok(top) = serde_json::from_str::<Object>(data) else {
        return rec;
    };
    let kind = top
        .get("type")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    let kind = kind.as_deref();
    if kind.is_some_and(|k| END_ALL.contains(&k)) {
        rec.end_all = true;
        return rec;
    }
    for (row, shape) in SHAPES.iter().enumerate() {
        if kind.is_some() && shape.ends == kind {
            rec.ends.push((row, index(&top, shape)));
        }
        if shape.kind != kind || (shape.kind.is_none() && top.contains_key("type")) {
            continue;
        }
        let items: Vec<Object> = match shape.items {
            None => vec![top.clone()],
            Some(k) => top
                .get(k)
                .and_then(|v| serde_json::from_str(v.get()).ok())
                .unwrap_or_default(),
        };
        for item in &items {
            let key = (row, index(item, shape));
            if let Some(lit) = path(item, &shape.text)
                && let Ok(text) = serde_json::from_str::<String>(lit.get())
                && let Some(start) =
                    (lit.get().as_ptr() as usize).checked_sub(data.as_ptr() as usize)
            {
                rec.texts.push((key, start..start + lit.get().len(), text));
            }
            if let Some(f) = shape.finish
                && item.get(f).is_some_and(|v| v.get() != "null")
            {
                rec.ends.push(key);
            }
        }
    }
    rec
}
