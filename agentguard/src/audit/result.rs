//! Recording one response (the result of one decided request): its columns,
//! the rows as forwarded, what was masked, under the per-request caps of
//! `[audit]` (`record_rows`, `record_bytes`). Rows past the cap are counted,
//! not stored. Rows go to the store in frames of up to 100 rows / 64 KiB,
//! so a long result does not cost a key per row.

use std::collections::BTreeMap;

use super::{DecisionId, Frame, SessionHandle};

const FRAME_ROWS: usize = 100;
const FRAME_BYTES: usize = 64 << 10;

pub struct ResultRecorder {
    session: SessionHandle,
    pub decision: DecisionId,
    max_rows: usize,
    max_bytes: usize,
    recorded_rows: usize,
    recorded_bytes: usize,
    /// Rows of the current result (since the last `complete`).
    rows_in_result: u64,
    omitted_in_result: u64,
    total_rows: u64,
    pending: Vec<Vec<Option<String>>>,
    pending_bytes: usize,
    masks: BTreeMap<String, u64>,
}

impl ResultRecorder {
    pub(super) fn new(
        session: SessionHandle,
        decision: DecisionId,
        max_rows: usize,
        max_bytes: usize,
    ) -> Self {
        Self {
            session,
            decision,
            max_rows,
            max_bytes,
            recorded_rows: 0,
            recorded_bytes: 0,
            rows_in_result: 0,
            omitted_in_result: 0,
            total_rows: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            masks: BTreeMap::new(),
        }
    }

    /// Whether the next row will be stored (else only counted): lets the
    /// caller skip decoding rows that would be thrown away.
    pub fn wants_row(&self) -> bool {
        self.recorded_rows < self.max_rows && self.recorded_bytes < self.max_bytes
    }

    pub async fn columns(&mut self, names: Vec<String>) {
        self.flush_rows().await;
        self.session.frame(Frame::Columns { names }).await;
    }

    /// A row as the agent received it (after masking).
    pub async fn row(&mut self, values: Option<Vec<Option<String>>>) {
        self.rows_in_result += 1;
        self.total_rows += 1;
        match values {
            Some(values) if self.wants_row() => {
                let bytes: usize = values.iter().flatten().map(String::len).sum::<usize>() + 1;
                self.recorded_rows += 1;
                self.recorded_bytes += bytes;
                self.pending_bytes += bytes;
                self.pending.push(values);
                if self.pending.len() >= FRAME_ROWS || self.pending_bytes >= FRAME_BYTES {
                    self.flush_rows().await;
                }
            }
            _ => self.omitted_in_result += 1,
        }
    }

    /// Values masked in what was forwarded: entity (or rule) → count.
    pub fn masked<'a>(&mut self, findings: impl IntoIterator<Item = (&'a str, u64)>) {
        for (entity, n) in findings {
            *self.masks.entry(entity.to_owned()).or_default() += n;
        }
    }

    /// Free text the agent received (COPY data), already masked.
    pub async fn text(&mut self, text: String) {
        self.flush_rows().await;
        if self.wants_row() {
            self.recorded_rows += 1;
            self.recorded_bytes += text.len();
            self.session.frame(Frame::Text { text }).await;
        }
    }

    /// One result ended (`SELECT 2`).
    pub async fn complete(&mut self, tag: String) {
        self.flush_rows().await;
        let (rows, omitted) = (self.rows_in_result, self.omitted_in_result);
        self.rows_in_result = 0;
        self.omitted_in_result = 0;
        self.session
            .frame(Frame::Complete { tag, rows, omitted })
            .await;
    }

    /// An error from the server: the message only (its detail may quote
    /// row values); the writer masks it before storage.
    pub async fn error(&mut self, code: String, message: String) {
        self.flush_rows().await;
        self.session.frame(Frame::Error { code, message }).await;
    }

    /// The response is over: rows and masks go into the decision record.
    pub async fn finish(mut self) {
        self.flush_rows().await;
        let masks = std::mem::take(&mut self.masks);
        self.session
            .result(self.decision, self.total_rows, masks)
            .await;
    }

    async fn flush_rows(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.session.frame(Frame::Rows { rows }).await;
    }
}
