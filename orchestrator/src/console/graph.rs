//! A saga's graph as the console draws it: its definition's forward steps
//! left to right, and under each the compensation that undoes it, each
//! step in the state its log shows.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::definition::Definition;
use crate::saga::StepEvent;
use crate::store::LogRecord;

/// Where a step stands, as its node is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    NotReached,
    Running,
    /// Running, with a failed attempt behind it.
    Retrying,
    Succeeded,
    Failed,
    /// A compensation that ran.
    Compensated,
    /// A compensation an operator marked done (`resolve`).
    ResolvedByHand,
}

impl NodeState {
    /// The name the page uses (a CSS class and a `data-state`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::NotReached => "not-reached",
            NodeState::Running => "running",
            NodeState::Retrying => "retrying",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::Compensated => "compensated",
            NodeState::ResolvedByHand => "resolved",
        }
    }

    /// What a person reads.
    pub fn label(self) -> &'static str {
        match self {
            NodeState::NotReached => "not reached",
            NodeState::Running => "running",
            NodeState::Retrying => "retrying",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::Compensated => "compensated",
            NodeState::ResolvedByHand => "resolved by hand",
        }
    }
}

/// One step of the graph, placed.
#[derive(Debug, Clone)]
pub struct Node {
    pub step: String,
    pub state: NodeState,
    pub attempts: i32,
    /// The last failed attempt's error, as logged.
    pub last_error: Option<String>,
    /// When its first row was written (its first attempt began).
    pub started: Option<DateTime<Utc>>,
    /// From its first row to its final one (succeeded or failed), every
    /// attempt and wait between them included; `None` until it has ended.
    pub took: Option<chrono::TimeDelta>,
    pub x: u32,
    pub y: u32,
}

/// A line between two nodes: along a chain (an arrow) or from a step down
/// to what undoes it (dashed).
#[derive(Debug, Clone)]
pub struct Edge {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    pub undoes: bool,
}

/// The forward chain and, under it, the compensations.
#[derive(Debug, Clone)]
pub struct Graph {
    pub forward: Vec<Node>,
    /// The compensation of each forward step that has one, in the same
    /// column as its step.
    pub compensations: Vec<Node>,
    pub edges: Vec<Edge>,
    pub width: u32,
    pub height: u32,
}

/// A node's size and the gaps between them, in SVG units.
pub const NODE_WIDTH: u32 = 180;
pub const NODE_HEIGHT: u32 = 56;
const GAP: u32 = 40;
const MARGIN: u32 = 16;
const ROW_GAP: u32 = 56;

impl Graph {
    /// The graph of `definition`, its steps in the states `logs` (the
    /// saga's log rows, in order) leave them.
    pub fn new(definition: &Definition, logs: &[LogRecord]) -> Self {
        let column = |i: usize| MARGIN + u32::try_from(i).unwrap_or(0) * (NODE_WIDTH + GAP);
        let second_row = MARGIN + NODE_HEIGHT + ROW_GAP;
        let forward: Vec<Node> = definition
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| node(&s.forward.step, false, logs, column(i), MARGIN))
            .collect();
        let compensations: Vec<Node> = definition
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let c = s.compensation.as_ref()?;
                Some(node(&c.step, true, logs, column(i), second_row))
            })
            .collect();
        let middle = NODE_HEIGHT / 2;
        // Forward, left to right; undoing, right to left; each step down to
        // its compensation.
        let along = |from: &Node, to: &Node, right: bool| Edge {
            x1: if right { from.x + NODE_WIDTH } else { from.x },
            y1: from.y + middle,
            x2: if right { to.x } else { to.x + NODE_WIDTH },
            y2: to.y + middle,
            undoes: false,
        };
        let mut edges: Vec<Edge> = forward
            .windows(2)
            .map(|pair: &[Node]| along(&pair[0], &pair[1], true))
            .chain(
                compensations
                    .windows(2)
                    .map(|pair: &[Node]| along(&pair[1], &pair[0], false)),
            )
            .collect();
        for c in &compensations {
            edges.push(Edge {
                x1: c.x + NODE_WIDTH / 2,
                y1: MARGIN + NODE_HEIGHT,
                x2: c.x + NODE_WIDTH / 2,
                y2: c.y,
                undoes: true,
            });
        }
        let columns = u32::try_from(definition.steps.len()).unwrap_or(0).max(1);
        Self {
            forward,
            compensations,
            edges,
            width: 2 * MARGIN + columns * NODE_WIDTH + (columns - 1) * GAP,
            height: second_row + NODE_HEIGHT + MARGIN,
        }
    }
}

/// The node of `step` (a compensation when `undoes`) at `(x, y)`.
fn node(step: &str, undoes: bool, logs: &[LogRecord], x: u32, y: u32) -> Node {
    let rows: Vec<&LogRecord> = logs.iter().filter(|r| r.step == step).collect();
    let last_error = rows
        .iter()
        .rev()
        .find(|r| matches!(r.status, StepEvent::Retrying | StepEvent::Failed))
        .map(|r| error_text(&r.detail));
    let state = match rows.last().map(|r| (r.status, &r.detail)) {
        None => NodeState::NotReached,
        Some((StepEvent::Succeeded, detail)) if undoes => match detail.get("action") {
            Some(Value::String(action)) if action == "resolve" => NodeState::ResolvedByHand,
            _ => NodeState::Compensated,
        },
        Some((StepEvent::Succeeded, _)) => NodeState::Succeeded,
        Some((StepEvent::Failed, _)) => NodeState::Failed,
        Some((StepEvent::Started, _)) if last_error.is_none() => NodeState::Running,
        Some(_) => NodeState::Retrying,
    };
    let started = rows.first().map(|r| r.at);
    let ended = rows
        .last()
        .filter(|r| matches!(r.status, StepEvent::Succeeded | StepEvent::Failed))
        .map(|r| r.at);
    Node {
        step: step.to_owned(),
        state,
        attempts: rows.iter().map(|r| r.attempt).max().unwrap_or(0),
        last_error,
        started,
        took: started.zip(ended).map(|(from, to)| to - from),
        x,
        y,
    }
}

impl Node {
    /// How long it took, as a person reads it ("" until it has ended).
    pub fn took_text(&self) -> String {
        self.took.map(duration_text).unwrap_or_default()
    }
}

/// A duration in its largest fitting unit: `850 µs`, `12 ms`, `3.4 s`,
/// `2 min 5 s`, `3 h 20 min`.
pub fn duration_text(d: chrono::TimeDelta) -> String {
    let micros = d.num_microseconds().unwrap_or(i64::MAX).max(0);
    let secs = micros / 1_000_000;
    match micros {
        0..1_000 => format!("{micros} µs"),
        1_000..1_000_000 => format!("{} ms", micros / 1_000),
        1_000_000..60_000_000 => format!("{:.1} s", micros as f64 / 1e6),
        60_000_000..3_600_000_000 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// A logged error in one line: its message when it has one.
fn error_text(detail: &Value) -> String {
    match detail.get("message").or_else(|| detail.get("error")) {
        Some(Value::String(text)) => text.clone(),
        _ => detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::definition::travel;

    fn row(step: &str, status: StepEvent, attempt: i32, detail: Value) -> LogRecord {
        LogRecord {
            saga_id: "t".into(),
            seq: 0,
            step: step.into(),
            status,
            attempt,
            detail,
            at: Utc::now(),
        }
    }

    fn states(graph: &Graph) -> Vec<(&str, NodeState)> {
        graph
            .forward
            .iter()
            .chain(&graph.compensations)
            .map(|n| (n.step.as_str(), n.state))
            .collect()
    }

    #[test]
    fn durations_read_in_their_largest_unit() {
        let text = |micros| duration_text(chrono::TimeDelta::microseconds(micros));
        assert_eq!(text(850), "850 µs");
        assert_eq!(text(12_400), "12 ms");
        assert_eq!(text(3_420_000), "3.4 s");
        assert_eq!(text(125_000_000), "2 min 5 s");
        assert_eq!(text(12_000_000_000), "3 h 20 min");
        assert_eq!(text(-5), "0 µs");
    }

    #[test]
    fn each_step_takes_the_state_its_log_leaves_it_in() {
        use NodeState::*;
        use StepEvent::{Failed as F, Retrying as R, Started as S, Succeeded as Ok};
        let logs = [
            row("ReserveFlight", S, 1, json!({})),
            row("ReserveFlight", Ok, 1, json!({})),
            row("ReserveCarRental", S, 1, json!({})),
            row("ReserveCarRental", R, 1, json!({ "message": "503" })),
            row("ReserveCarRental", F, 2, json!({ "error": "refused" })),
            row("CancelRentalReservation", S, 1, json!({})),
            row(
                "CancelRentalReservation",
                R,
                1,
                json!({ "message": "gone" }),
            ),
            row(
                "CancelRentalReservation",
                Ok,
                1,
                json!({ "action": "resolve" }),
            ),
            row("CancelFlightReservation", S, 1, json!({})),
            row(
                "CancelFlightReservation",
                R,
                1,
                json!({ "message": "timed out" }),
            ),
        ];
        let graph = Graph::new(&travel(), &logs);
        assert_eq!(
            states(&graph),
            [
                ("ReserveFlight", Succeeded),
                ("ReserveCarRental", Failed),
                ("ProcessPayment", NotReached),
                ("ConfirmFlight", NotReached),
                ("ConfirmCarRental", NotReached),
                ("CancelFlightReservation", Retrying),
                ("CancelRentalReservation", ResolvedByHand),
                ("RefundPayment", NotReached),
            ]
        );
        let car = &graph.forward[1];
        assert_eq!(
            (car.attempts, car.last_error.as_deref()),
            (2, Some("refused"))
        );
        let flight = &graph.compensations[0];
        assert_eq!(flight.last_error.as_deref(), Some("timed out"));
    }

    #[test]
    fn compensations_sit_under_their_steps_and_chain_back() {
        let graph = Graph::new(
            &travel(),
            &[row("ReserveFlight", StepEvent::Started, 1, json!({}))],
        );
        assert_eq!(graph.forward[0].state, NodeState::Running);
        // Under ReserveFlight, ReserveCarRental and ProcessPayment.
        let columns: Vec<u32> = graph.compensations.iter().map(|n| n.x).collect();
        assert_eq!(
            columns,
            [graph.forward[0].x, graph.forward[1].x, graph.forward[2].x]
        );
        // Four arrows forward, two back, three down.
        let down = graph.edges.iter().filter(|e| e.undoes).count();
        assert_eq!((graph.edges.len(), down), (9, 3));
        let back = &graph.edges[4];
        assert!(back.x1 > back.x2, "undoing runs right to left");
        assert!(graph.width >= graph.forward[4].x + NODE_WIDTH);
    }
}
