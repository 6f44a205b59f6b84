//! Checks that docs/state-machine.md draws exactly the moves `transition()` allows.

use std::collections::BTreeSet;

use kiln_domain::{Event, JobState, Step, transition};

const DOC: &str = include_str!("../../../docs/state-machine.md");

/// `(from, to, event name)` for every `a --> b : event …` line between two states.
fn drawn() -> BTreeSet<(String, String, String)> {
    DOC.lines()
        .filter_map(|line| {
            let (moves, label) = line.trim().split_once(" : ")?;
            let (from, to) = moves.split_once(" --> ")?;
            if from == "[*]" || to == "[*]" {
                return None;
            }
            let event = label.split_whitespace().next()?.to_owned();
            Some((from.to_owned(), to.to_owned(), event))
        })
        .collect()
}

/// The same set computed from the state machine.
fn allowed() -> BTreeSet<(String, String, String)> {
    let mut moves = BTreeSet::new();
    for from in JobState::ALL {
        for event in Event::ALL {
            if let Ok(Step::To(to)) = transition(from, event) {
                moves.insert((from.to_string(), to.to_string(), event.name().to_owned()));
            }
        }
    }
    moves
}

#[test]
fn the_diagram_lists_exactly_the_legal_moves() {
    assert_eq!(drawn(), allowed());
}
