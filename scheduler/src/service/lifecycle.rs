//! A job's lifecycle in one place: every state change the service makes is an
//! [`Event`] looked up in [`TRANSITIONS`]; a change that is not in the table is
//! refused ([`super::Inner::change`] returns `None` and logs it), so no code path
//! can move a job from, say, `succeeded` back to `running`.
//!
//! ```text
//!            plan ┌─────────┐ plan
//!   queued ◄─────►│ planned │◄────► late          (any waiting state, incl. evicted)
//!     ▲  dispatch └────┬────┘ dispatch
//!     │                ▼
//!     │ stopped / node lost ◄── dispatched ──started──► running
//!     │                         │   │                    │   │
//!     └───────────── evicted ◄──┘   └─► failed ◄─────────┘   └─► succeeded
//!   cancel: waiting → cancelled; on a node → cancelling, then cancelled
//!   once the agent reports the process gone (stop confirmed)
//! ```

use greenfill_proto::v1::JobState as S;

/// What happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The plan places it, to start later (or now, on a node not connected).
    Planned,
    /// The plan places it past its deadline.
    PlannedLate,
    /// The plan leaves it waiting.
    Waits,
    /// The plan leaves it waiting and its deadline can no longer be met.
    WaitsLate,
    /// Sent to a node to start now (a new attempt).
    Dispatched,
    /// The agent started it.
    Started,
    /// It exited 0.
    Succeeded,
    /// It exited non-zero, by a signal, OOM, or could not start.
    Failed,
    /// The agent's guard stopped it to protect online services.
    Evicted,
    /// The agent stopped it without a cancel (it could not keep it), or its node
    /// went silent: it runs again.
    Requeued,
    /// A user cancelled it.
    Cancelled,
    /// The agent reports a cancelled job's process gone (it exited, was
    /// stopped, or the agent registered without it).
    StopConfirmed,
}

const WAITING: [S; 4] = [S::Queued, S::Planned, S::Late, S::Evicted];
const ON_A_NODE: [S; 2] = [S::Dispatched, S::Running];

/// `(from, event) → to`: every legal change, and nothing else.
pub const TRANSITIONS: &[(&[S], Event, S)] = &[
    (&WAITING, Event::Planned, S::Planned),
    (&WAITING, Event::PlannedLate, S::Late),
    // An evicted job keeps saying so until it runs again.
    (&[S::Queued, S::Planned, S::Late], Event::Waits, S::Queued),
    (&[S::Queued, S::Planned, S::Late], Event::WaitsLate, S::Late),
    (&WAITING, Event::Dispatched, S::Dispatched),
    (&[S::Dispatched], Event::Started, S::Running),
    (&ON_A_NODE, Event::Succeeded, S::Succeeded),
    (&ON_A_NODE, Event::Failed, S::Failed),
    (&ON_A_NODE, Event::Evicted, S::Evicted),
    (&ON_A_NODE, Event::Requeued, S::Queued),
    (&WAITING, Event::Cancelled, S::Cancelled),
    (&ON_A_NODE, Event::Cancelled, S::Cancelling),
    (&[S::Cancelling], Event::StopConfirmed, S::Cancelled),
];

/// The state `event` moves a job in `from` to, or `None` when it may not.
pub fn next(from: S, event: Event) -> Option<S> {
    TRANSITIONS.iter().find(|(froms, e, _)| *e == event && froms.contains(&from)).map(|(_, _, to)| *to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [S; 10] = [
        S::Queued,
        S::Planned,
        S::Dispatched,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::Cancelled,
        S::Evicted,
        S::Late,
        S::Cancelling,
    ];
    const ALL_EVENTS: [Event; 12] = [
        Event::Planned,
        Event::PlannedLate,
        Event::Waits,
        Event::WaitsLate,
        Event::Dispatched,
        Event::Started,
        Event::Succeeded,
        Event::Failed,
        Event::Evicted,
        Event::Requeued,
        Event::Cancelled,
        Event::StopConfirmed,
    ];

    /// The whole table, state by state: `-` is refused.
    #[test]
    fn the_lifecycle_table() {
        #[rustfmt::skip]
        let expected: [(S, [Option<S>; 12]); 10] = [
            //              Planned          PlannedLate   Waits            WaitsLate     Dispatched          Started          Succeeded          Failed          Evicted          Requeued         Cancelled          StopConfirmed
            (S::Queued, [Some(S::Planned), Some(S::Late), Some(S::Queued), Some(S::Late), Some(S::Dispatched), None, None, None, None, None, Some(S::Cancelled), None]),
            (S::Planned, [Some(S::Planned), Some(S::Late), Some(S::Queued), Some(S::Late), Some(S::Dispatched), None, None, None, None, None, Some(S::Cancelled), None]),
            (S::Late, [Some(S::Planned), Some(S::Late), Some(S::Queued), Some(S::Late), Some(S::Dispatched), None, None, None, None, None, Some(S::Cancelled), None]),
            (S::Evicted, [Some(S::Planned), Some(S::Late), None, None, Some(S::Dispatched), None, None, None, None, None, Some(S::Cancelled), None]),
            (S::Dispatched, [None, None, None, None, None, Some(S::Running), Some(S::Succeeded), Some(S::Failed), Some(S::Evicted), Some(S::Queued), Some(S::Cancelling), None]),
            (S::Running, [None, None, None, None, None, None, Some(S::Succeeded), Some(S::Failed), Some(S::Evicted), Some(S::Queued), Some(S::Cancelling), None]),
            (S::Cancelling, [None, None, None, None, None, None, None, None, None, None, None, Some(S::Cancelled)]),
            (S::Succeeded, [None; 12]),
            (S::Failed, [None; 12]),
            (S::Cancelled, [None; 12]),
        ];
        assert_eq!(expected.len(), ALL_STATES.len());
        for (from, row) in expected {
            for (event, want) in ALL_EVENTS.iter().zip(row) {
                assert_eq!(next(from, *event), want, "{from:?} + {event:?}");
            }
        }
        // Terminal states are final, whatever happens.
        for from in [S::Succeeded, S::Failed, S::Cancelled] {
            assert!(ALL_EVENTS.iter().all(|e| next(from, *e).is_none()));
        }
    }
}
