//! Linearizability checker for one register, meant to be run per KV key
//! (testing.md, "Checkers"). It is the Wing–Gong search with Lowe's
//! memoisation, the algorithm Knossos and Porcupine use: walk the history in
//! time order, tentatively linearize any operation that is pending (invoked,
//! and no operation that completed before it was invoked is still
//! unlinearized), backtrack when an operation's completion is reached
//! before it was linearized, and never revisit a (set of linearized
//! operations, register value) pair.
//!
//! An operation whose outcome is unknown (the call timed out or its
//! connection broke) may have taken effect at any moment after it was
//! invoked and before its `completed` time, or never. Without more
//! knowledge `completed` is `None` (+infinity); a client session bounds it
//! (see the KV test): once the session's next write was applied, an older
//! one never will be.

use std::collections::HashSet;
use std::time::Instant;

/// The register's value: absent, or the id of the write that set it.
pub type Val = Option<u64>;

/// What a compare-and-swap answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    Swapped,
    /// Not swapped; the value it found.
    Failed(Val),
}

/// One operation on the register and what it returned (`None` where the
/// outcome is unknown: it took effect, or it did not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// put(value), answered with the previous value.
    Put { value: u64, prev: Option<Val> },
    /// A read that returned `value`.
    Get { value: Val },
    /// delete, answered with whether the key existed.
    Delete { existed: Option<bool> },
    /// Set to `value` if the current value is `expected`.
    Cas {
        expected: Val,
        value: u64,
        outcome: Option<CasOutcome>,
    },
}

/// One operation of a history: when it was invoked, when its answer came
/// (for an unknown outcome: the latest moment it could have taken effect;
/// `None`: no bound) and what it was.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub invoked: Instant,
    pub completed: Option<Instant>,
    pub op: RegOp,
}

/// The register's possible values after `op` (none if `op`'s answer is
/// impossible from `state`; an unknown outcome adds "it did not happen").
fn step(state: Val, op: &RegOp) -> Vec<Val> {
    let applied = match *op {
        RegOp::Put { value, prev } => match prev {
            Some(p) if p != state => None,
            _ => Some(Some(value)),
        },
        RegOp::Get { value } => (value == state).then_some(state),
        RegOp::Delete { existed } => match existed {
            Some(e) if e != state.is_some() => None,
            _ => Some(None),
        },
        RegOp::Cas {
            expected,
            value,
            outcome,
        } => match outcome {
            Some(CasOutcome::Swapped) => (state == expected).then_some(Some(value)),
            Some(CasOutcome::Failed(found)) => {
                (state != expected && found == state).then_some(state)
            }
            None if state == expected => Some(Some(value)),
            None => Some(state),
        },
    };
    let unknown = matches!(
        op,
        RegOp::Put { prev: None, .. }
            | RegOp::Delete { existed: None }
            | RegOp::Cas { outcome: None, .. }
    );
    let mut next: Vec<Val> = applied.into_iter().collect();
    if unknown && !next.contains(&state) {
        next.push(state);
    }
    next
}

/// The search gives up (and says so) beyond this many explored states.
const MAX_STATES: usize = 4_000_000;

/// Checks that `history` (starting from an absent value) is linearizable.
/// On failure, says how far the longest linearization got and which
/// operations were left, for the test's message.
pub fn check_register(history: &[Event]) -> Result<(), String> {
    let n = history.len();
    if n == 0 {
        return Ok(());
    }
    // Events 1..=2n in time order (calls before returns at equal times,
    // which treats such operations as concurrent); 0 is the list's head.
    // Unknown outcomes return after everything else.
    let mut events: Vec<(Instant, bool, usize)> = Vec::with_capacity(2 * n);
    let last = history
        .iter()
        .map(|e| e.completed.unwrap_or(e.invoked).max(e.invoked))
        .max()
        .unwrap_or_else(Instant::now);
    for (i, e) in history.iter().enumerate() {
        events.push((e.invoked, false, i));
        let done = match e.completed {
            Some(t) => t.max(e.invoked),
            None => last + std::time::Duration::from_secs(1),
        };
        events.push((done, true, i));
    }
    events.sort_by_key(|&(t, is_return, i)| (t, is_return, i));
    const NIL: usize = usize::MAX;
    let total = 2 * n + 1;
    let mut next = vec![NIL; total];
    let mut prev = vec![NIL; total];
    let mut op_of = vec![0usize; total];
    let mut is_call = vec![false; total];
    let mut return_of_op = vec![0usize; n];
    for (k, &(_, is_return, i)) in events.iter().enumerate() {
        let e = k + 1;
        op_of[e] = i;
        is_call[e] = !is_return;
        if is_return {
            return_of_op[i] = e;
        }
        prev[e] = k;
        next[k] = e;
    }
    next[2 * n] = NIL;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let r = return_of_op[op_of[e]];
        for x in [e, r] {
            next[prev[x]] = next[x];
            if next[x] != NIL {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let r = return_of_op[op_of[e]];
        for x in [r, e] {
            next[prev[x]] = x;
            if next[x] != NIL {
                prev[next[x]] = x;
            }
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Val = None;
    let mut seen: HashSet<(Vec<u64>, Val)> = HashSet::new();
    let mut stack: Vec<(usize, Val)> = Vec::new();
    // Where the deepest attempt got stuck: (ordered so far, value then,
    // the operation that completed without a place).
    let mut stuck: (usize, Val, usize) = (0, None, 0);
    let mut entry = next[0];
    while next[0] != NIL {
        if is_call[entry] {
            let i = op_of[entry];
            let mut with = linearized.clone();
            with[i / 64] |= 1 << (i % 64);
            // The first possible outcome not explored yet from here; when
            // the search comes back to this operation, the next one.
            let untried = step(state, &history[i].op)
                .into_iter()
                .find(|after| seen.insert((with.clone(), *after)));
            if let Some(after) = untried {
                if seen.len() > MAX_STATES {
                    return Err(format!(
                        "undecided: the search passed {MAX_STATES} states on {n} operations"
                    ));
                }
                stack.push((entry, state));
                state = after;
                linearized = with;
                lift(&mut next, &mut prev, entry);
                entry = next[0];
                continue;
            }
            entry = next[entry];
        } else {
            // An operation completed without a place in the order: undo the
            // most recent choice and try the next candidate after it.
            if stack.len() >= stuck.0 {
                stuck = (stack.len(), state, op_of[entry]);
            }
            let Some((e, s)) = stack.pop() else {
                let (ordered, value, op) = stuck;
                let t0 = history.iter().map(|e| e.invoked).min().unwrap_or(last);
                let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;
                let when = |e: &Event| match e.completed {
                    Some(c) => format!("{:.1}..{:.1} ms", ms(e.invoked), ms(c)),
                    None => format!("{:.1} ms..unknown", ms(e.invoked)),
                };
                let blocked = &history[op];
                let concurrent: Vec<String> = history
                    .iter()
                    .filter(|e| {
                        e.invoked <= blocked.completed.unwrap_or(last)
                            && e.completed.is_none_or(|c| c >= blocked.invoked)
                    })
                    .take(12)
                    .map(|e| format!("{:?} at {}", e.op, when(e)))
                    .collect();
                return Err(format!(
                    "not linearizable: the longest valid order has {ordered} of {n} operations \
                     (value then {value:?}) and cannot place {:?} at {}; operations overlapping \
                     it: {concurrent:#?}",
                    blocked.op,
                    when(blocked)
                ));
            };
            let i = op_of[e];
            linearized[i / 64] &= !(1 << (i % 64));
            state = s;
            unlift(&mut next, &mut prev, e);
            // Back to the same operation: it may have another outcome.
            entry = e;
        }
    }
    Ok(())
}
