//! The request pipeline's middle step, "decide", shared by every protocol
//! guard: detect → codec → request → **decide** → mask → forward → record.
//!
//! A guard decodes one request from its protocol, turns it into a
//! [`decide::Request`] plus the [`RequestSummary`] its audit record shows,
//! and asks [`Guarded::decide`]. The answer is a [`Verdict`]: allow with the
//! mask plan for the reply, or deny with the reason the guard words in its
//! own protocol (ErrorResponse, 403, close 1008). Everything between is
//! here, once: the policy decision, the hold for a person when the policy
//! says `approve` (the verdict is then what the person or the timeout
//! decided), the mask selection (a mask list that does not compile is a
//! deny: masking less than the policy asked is not an option), the decision
//! record (a record the audit log cannot take is a deny) and the metrics.
//!
//! What a guard still does itself: wait for its connection's records to be
//! committed before reply bytes go out ([`SessionHandle::committed`]) and
//! record the reply as it forwards it ([`crate::audit::ResultRecorder`]).

use std::{sync::Arc, time::Instant};

use agentguard_mask::{Engine, Selection};
use tracing::{debug, warn};

use crate::{
    approvals::Approvals,
    audit::{DecisionId, DecisionRecord, RequestSummary, SessionHandle},
    decide::{self, Action, Decide, Decision, Input, Prepared, Target},
    identity::Identity,
};

/// One guarded connection as the pipeline sees it: who, where to, and
/// where its records go.
#[derive(Clone)]
pub struct Guarded {
    pub decider: Arc<dyn Decide>,
    /// Where `approve` decisions wait for a person.
    pub approvals: Arc<Approvals>,
    pub identity: Identity,
    pub target: Target,
    /// The connection's recording.
    pub session: SessionHandle,
    /// Identity and target as the policy engine encoded them (once).
    pub prepared: Arc<Prepared>,
}

/// Which decisions of a request kind get their own record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Every decision (a statement, an HTTP request).
    Every,
    /// Only refusals; allows are counted in the metrics. For decisions on
    /// the messages of a stream whose opening was recorded (WebSocket).
    Refusals,
}

/// One decoded request, as a guard hands it to the pipeline.
pub struct Ask<'a> {
    pub request: decide::Request,
    /// What the audit log shows for it.
    pub summary: RequestSummary,
    /// When the request arrived (the record's added latency starts here).
    pub started: Instant,
    /// The engine the reply will be masked with; `None`: no mask plan.
    pub masker: Option<&'a Engine>,
    pub record: Record,
    /// The guard cannot carry the request through even if allowed (no
    /// usable server): an allow becomes a deny with this reason.
    pub unusable: Option<String>,
}

impl Ask<'_> {
    pub fn new(request: decide::Request, summary: RequestSummary, started: Instant) -> Self {
        Self {
            request,
            summary,
            started,
            masker: None,
            record: Record::Every,
            unusable: None,
        }
    }
}

impl<'a> Ask<'a> {
    pub fn mask_with(self, engine: Option<&'a Engine>) -> Self {
        Self {
            masker: engine,
            ..self
        }
    }

    pub fn record(self, record: Record) -> Self {
        Self { record, ..self }
    }

    pub fn unusable(self, reason: Option<String>) -> Self {
        Self {
            unusable: reason,
            ..self
        }
    }
}

/// The pipeline's answer to one request.
#[derive(Debug)]
pub enum Verdict {
    Allow {
        /// How to mask the reply (`None` when no engine was given).
        mask: Option<Selection>,
        /// The decision's record; `None` under [`Record::Refusals`].
        audit: Option<DecisionId>,
        reason: String,
    },
    Deny {
        reason: String,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Allow { reason, .. } | Self::Deny { reason } => reason,
        }
    }
}

/// The policy's decision, with an `approve` held until a person (or the
/// timeout) answers: the result is allow or deny.
pub async fn decide_held(
    decider: &dyn Decide,
    approvals: &Approvals,
    input: &Input,
    prepared: Option<&Prepared>,
) -> Decision {
    let decision = match prepared {
        Some(p) => decider.decide_prepared(input, p),
        None => decider.decide(input),
    };
    if decision.action != Action::Approve {
        return decision;
    }
    warn!(reason = %decision.reason, "held for approval");
    approvals.hold(input, decision).await
}

impl Guarded {
    /// Decides one request: policy, hold, mask plan, record, metrics.
    pub async fn decide(&self, ask: Ask<'_>) -> Verdict {
        let input = Input {
            identity: self.identity.clone(),
            target: self.target.clone(),
            request: ask.request,
        };
        let mut decision = decide_held(
            &*self.decider,
            &self.approvals,
            &input,
            Some(&self.prepared),
        )
        .await;
        let mut mask = None;
        if decision.action == Action::Allow {
            let refused = match (ask.unusable, ask.masker) {
                (Some(reason), _) => Some(reason),
                (None, Some(engine)) => {
                    match engine.selection(self.target.name.as_deref(), &decision.mask) {
                        Ok(sel) => {
                            mask = Some(sel);
                            None
                        }
                        Err(e) => Some(format!("policy error: the decision's mask list: {e}")),
                    }
                }
                (None, None) => None,
            };
            if let Some(reason) = refused {
                decision = Decision {
                    action: Action::Deny,
                    reason,
                    ..decision
                };
            }
        }
        let allowed = decision.action == Action::Allow;
        if allowed {
            debug!(request = %ask.summary.line(), reason = %decision.reason, "allowed");
        } else {
            warn!(request = %ask.summary.line(), reason = %decision.reason, "denied");
        }
        let audit = if allowed && ask.record == Record::Refusals {
            crate::metrics::get().decision(
                ask.summary.kind(),
                "allow",
                u64::try_from(ask.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
            None
        } else {
            match self.record(ask.summary, &decision, ask.started).await {
                Ok(id) => Some(id),
                Err(reason) => return Verdict::Deny { reason },
            }
        };
        if allowed {
            Verdict::Allow {
                mask,
                audit,
                reason: decision.reason,
            }
        } else {
            Verdict::Deny {
                reason: decision.reason,
            }
        }
    }

    /// Records a refusal that needed no policy (the protocol forbids it, the
    /// request cannot be read): recorded like any deny.
    pub async fn refuse(&self, summary: RequestSummary, reason: &str, started: Instant) {
        warn!(request = %summary.line(), reason, "refused");
        // Refused anyway: an overloaded recorder changes nothing.
        let _ = self.record(summary, &Decision::deny(reason), started).await;
    }

    /// `Err`: the audit log cannot take the record (on_overload = deny), so
    /// the request is refused with that reason.
    async fn record(
        &self,
        summary: RequestSummary,
        decision: &Decision,
        started: Instant,
    ) -> Result<DecisionId, String> {
        let record = DecisionRecord::new(
            Some(self.session.id),
            Some(&self.identity),
            Some(&self.target),
            summary,
            decision,
            started.elapsed(),
        );
        self.session.decision(record).await.map_err(|e| {
            warn!(reason = %e, "denied");
            e.to_string()
        })
    }
}
