//! A linearizability checker for client histories of a key-value store.
//!
//! Every operation touches one key, and keys are independent registers, so the
//! history is split by key and each part is checked on its own (linearizability is
//! compositional). For each key the search is Wing & Gong's, with Lowe's cache of
//! visited (linearized set, register state) configurations: walk the events in
//! time order, try to linearize each pending call whose effect matches what the
//! model allows, and backtrack when a return is reached whose call could not be
//! placed.
//!
//! An operation whose outcome the client does not know (an error or time-out on a
//! write) has no return event: it may take effect at any point after its call, or
//! never. A read that failed had no effect and is left out of the history.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// What the client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Put(String),
    Get,
    Delete,
    /// Transaction: if the value equals `expect` (None = key absent) then put
    /// `new`; otherwise read the value.
    Cas {
        expect: Option<String>,
        new: String,
    },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// A put was acknowledged.
    Ok,
    /// A get returned this value (None = no such key).
    Value(Option<String>),
    /// A delete removed this many keys (0 or 1).
    Deleted(i64),
    /// A transaction's compare outcome, and the value read in the else branch.
    Cas {
        succeeded: bool,
        read: Option<String>,
    },
    /// The outcome is unknown (error or time-out).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub call: Call,
    pub ret: Ret,
    /// Nanoseconds since the history's start.
    pub invoke: u64,
    pub complete: u64,
}

/// A history recorded by concurrent clients.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// A timestamp to pass as the invocation time.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records an operation invoked at `invoke` that just returned `ret`.
    pub fn record(&self, client: usize, key: &str, call: Call, invoke: u64, ret: Ret) {
        let complete = self.now();
        self.ops.lock().unwrap().push(Op {
            client,
            key: key.to_string(),
            call,
            ret,
            invoke,
            complete,
        });
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.ops.lock().unwrap().len()
    }
}

/// Why a history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    /// The operations of that key, in invocation order.
    pub ops: Vec<Op>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "history of key {:?} is not linearizable:", self.key)?;
        for o in &self.ops {
            let done = if o.ret == Ret::Unknown {
                "?".to_string()
            } else {
                format!("{:.3}ms", o.complete as f64 / 1e6)
            };
            writeln!(
                f,
                "  client {} [{:.3}ms .. {}] {:?} -> {:?}",
                o.client,
                o.invoke as f64 / 1e6,
                done,
                o.call,
                o.ret
            )?;
        }
        Ok(())
    }
}

/// The register after `call`, or None when `ret` could not have been observed
/// from `state`.
fn step(state: &Option<String>, call: &Call, ret: &Ret) -> Option<Option<String>> {
    let unknown = *ret == Ret::Unknown;
    match call {
        Call::Put(v) => Some(Some(v.clone())),
        Call::Get => match ret {
            Ret::Value(v) if v == state => Some(state.clone()),
            _ if unknown => Some(state.clone()),
            _ => None,
        },
        Call::Delete => match ret {
            Ret::Deleted(n) if *n == state.is_some() as i64 => Some(None),
            _ if unknown => Some(None),
            _ => None,
        },
        Call::Cas { expect, new } => {
            let hit = state == expect;
            match ret {
                Ret::Cas { succeeded, read } => {
                    if *succeeded != hit {
                        None
                    } else if hit {
                        Some(Some(new.clone()))
                    } else if read == state {
                        Some(state.clone())
                    } else {
                        None
                    }
                }
                _ if unknown => Some(if hit {
                    Some(new.clone())
                } else {
                    state.clone()
                }),
                _ => None,
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Checks one key's operations, starting from `initial`. Returns whether a
/// linearization exists, or None when the search exceeded `budget` steps.
pub fn check_register(ops: &[Op], initial: Option<String>, budget: u64) -> Option<bool> {
    // Events sorted by time; a call sorts before a return at the same instant.
    let mut evs: Vec<(u64, u8, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        evs.push((o.invoke, 0, i));
        if o.ret != Ret::Unknown {
            evs.push((o.complete.max(o.invoke), 1, i));
        }
    }
    evs.sort();
    // A doubly linked list with a head sentinel at index 0.
    let n = evs.len();
    let mut list: Vec<Event> = Vec::with_capacity(n + 1);
    list.push(Event {
        op: usize::MAX,
        is_call: false,
        prev: 0,
        next: if n > 0 { 1 } else { usize::MAX },
    });
    let mut call_at = vec![usize::MAX; ops.len()];
    let mut ret_at = vec![usize::MAX; ops.len()];
    for (k, &(_, kind, op)) in evs.iter().enumerate() {
        let idx = k + 1;
        list.push(Event {
            op,
            is_call: kind == 0,
            prev: idx - 1,
            next: if k + 1 < n { idx + 1 } else { usize::MAX },
        });
        if kind == 0 {
            call_at[op] = idx;
        } else {
            ret_at[op] = idx;
        }
    }
    let unlink = |list: &mut Vec<Event>, i: usize| {
        let (p, nx) = (list[i].prev, list[i].next);
        list[p].next = nx;
        if nx != usize::MAX {
            list[nx].prev = p;
        }
    };
    let relink = |list: &mut Vec<Event>, i: usize| {
        let (p, nx) = (list[i].prev, list[i].next);
        list[p].next = i;
        if nx != usize::MAX {
            list[nx].prev = i;
        }
    };
    let mut remaining = ops.iter().filter(|o| o.ret != Ret::Unknown).count();
    let words = ops.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state = initial;
    let mut cur = list[0].next;
    let mut steps = 0u64;
    while remaining > 0 {
        steps += 1;
        if steps > budget {
            return None;
        }
        if cur == usize::MAX {
            // Only calls of unknown outcome are left after `cur`'s predecessors,
            // yet some definite operation is unplaced: backtrack.
            let Some((op, prev_state)) = stack.pop() else {
                return Some(false);
            };
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            if ret_at[op] != usize::MAX {
                relink(&mut list, ret_at[op]);
                remaining += 1;
            }
            relink(&mut list, call_at[op]);
            cur = list[call_at[op]].next;
            continue;
        }
        let e = list[cur];
        if e.is_call {
            let o = &ops[e.op];
            if let Some(next) = step(&state, &o.call, &o.ret) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), next.clone())) {
                    stack.push((e.op, std::mem::replace(&mut state, next)));
                    linearized = lin;
                    unlink(&mut list, cur);
                    if ret_at[e.op] != usize::MAX {
                        unlink(&mut list, ret_at[e.op]);
                        remaining -= 1;
                    }
                    cur = list[0].next;
                    continue;
                }
            }
            cur = e.next;
        } else {
            // A return whose call is still pending: the placement so far fails.
            let Some((op, prev_state)) = stack.pop() else {
                return Some(false);
            };
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            if ret_at[op] != usize::MAX {
                relink(&mut list, ret_at[op]);
                remaining += 1;
            }
            relink(&mut list, call_at[op]);
            cur = list[call_at[op]].next;
        }
    }
    Some(true)
}

/// The value an operation writes, if it writes one.
fn written(call: &Call) -> Option<&String> {
    match call {
        Call::Put(v) => Some(v),
        Call::Cas { new, .. } => Some(new),
        Call::Get | Call::Delete => None,
    }
}

/// `ops` without the writes of unknown outcome whose value nobody observed.
///
/// Every unknown operation may or may not have happened, and each one kept
/// multiplies the configurations the search may visit. A history that is
/// linearizable without some of them is linearizable (they did not happen), so the
/// search first tries without the unobserved ones; only when that fails does it
/// need them all.
fn without_unobserved_unknowns(ops: &[Op]) -> Vec<Op> {
    let mut seen: HashSet<&String> = HashSet::new();
    for o in ops {
        match (&o.call, &o.ret) {
            (_, Ret::Value(Some(v))) => {
                seen.insert(v);
            }
            (Call::Cas { expect, .. }, Ret::Cas { succeeded, read }) => {
                if let (true, Some(e)) = (succeeded, expect) {
                    seen.insert(e);
                }
                if let Some(r) = read {
                    seen.insert(r);
                }
            }
            _ => {}
        }
    }
    ops.iter()
        .filter(|o| o.ret != Ret::Unknown || written(&o.call).is_none_or(|v| seen.contains(v)))
        .cloned()
        .collect()
}

/// Checks every key of `ops` (each key starts absent). Returns the first key whose
/// history is not linearizable; panics if a key's search exceeds its budget.
pub fn check(ops: &[Op]) -> Result<usize, Violation> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for o in ops {
        by_key.entry(o.key.as_str()).or_default().push(o.clone());
    }
    let mut checked = 0;
    for (key, mut kops) in by_key {
        kops.sort_by_key(|o| o.invoke);
        let pruned = without_unobserved_unknowns(&kops);
        let mut verdict = check_register(&pruned, None, 5_000_000);
        if verdict != Some(true) && pruned.len() < kops.len() {
            verdict = check_register(&kops, None, 20_000_000);
        }
        match verdict {
            Some(true) => checked += kops.len(),
            Some(false) => {
                return Err(Violation {
                    key: key.to_string(),
                    ops: kops,
                });
            }
            None => panic!(
                "linearizability search for key {key:?} ({} operations, {} of unknown outcome) \
                 exceeded its budget",
                kops.len(),
                kops.iter().filter(|o| o.ret == Ret::Unknown).count()
            ),
        }
    }
    Ok(checked)
}

/// Panics with the offending key's history when `history` is not linearizable;
/// returns how many operations were checked.
pub fn assert_linearizable(history: &History) -> usize {
    let ops = history.ops();
    match check(&ops) {
        Ok(n) => n,
        Err(v) => panic!("{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, ret: Ret, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret,
            invoke,
            complete,
        }
    }

    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }

    fn val(v: Option<&str>) -> Ret {
        Ret::Value(v.map(String::from))
    }

    fn ok(ops: &[Op]) -> bool {
        check_register(ops, None, 1_000_000).expect("within budget")
    }

    #[test]
    fn sequential_history_passes() {
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(1, Call::Get, val(Some("1")), 20, 30),
            op(0, Call::Delete, Ret::Deleted(1), 40, 50),
            op(1, Call::Get, val(None), 60, 70),
            op(1, Call::Delete, Ret::Deleted(0), 80, 90),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        // The put overlaps both reads: one may see the old value and the other the
        // new one, as long as the order is consistent.
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(0, put("2"), Ret::Ok, 20, 100),
            op(1, Call::Get, val(Some("1")), 30, 40),
            op(2, Call::Get, val(Some("2")), 50, 60),
            op(1, Call::Get, val(Some("2")), 70, 80),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn planted_stale_read_is_caught() {
        // Once a read saw "2", a later read (begun after it returned) sees "1".
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(0, put("2"), Ret::Ok, 20, 100),
            op(1, Call::Get, val(Some("2")), 30, 40),
            op(2, Call::Get, val(Some("1")), 50, 60),
        ];
        assert!(!ok(&h));
        // Also after the write completed, with no concurrency at all.
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(0, put("2"), Ret::Ok, 20, 30),
            op(1, Call::Get, val(Some("1")), 40, 50),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn planted_lost_write_is_caught() {
        // An acknowledged put, then reads that never see it.
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(1, put("2"), Ret::Ok, 20, 30),
            op(2, Call::Get, val(Some("1")), 40, 50),
        ];
        assert!(!ok(&h));
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(2, Call::Get, val(None), 40, 50),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        // A timed-out put may show up later ...
        let h = [
            op(0, put("1"), Ret::Unknown, 0, 10),
            op(1, Call::Get, val(None), 20, 30),
            op(1, Call::Get, val(Some("1")), 40, 50),
        ];
        assert!(ok(&h));
        // ... or never.
        let h = [
            op(0, put("1"), Ret::Unknown, 0, 10),
            op(1, Call::Get, val(None), 20, 30),
        ];
        assert!(ok(&h));
        // But it cannot take effect before it was sent.
        let h = [
            op(1, Call::Get, val(Some("1")), 0, 10),
            op(0, put("1"), Ret::Unknown, 20, 30),
        ];
        assert!(!ok(&h));
        // Nor un-happen once seen.
        let h = [
            op(0, put("1"), Ret::Unknown, 0, 10),
            op(1, Call::Get, val(Some("1")), 20, 30),
            op(1, Call::Get, val(None), 40, 50),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn transactions_are_checked() {
        let cas = |e: Option<&str>, n: &str| Call::Cas {
            expect: e.map(String::from),
            new: n.into(),
        };
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(
                1,
                cas(Some("1"), "2"),
                Ret::Cas {
                    succeeded: true,
                    read: None,
                },
                20,
                30,
            ),
            op(
                2,
                cas(Some("1"), "3"),
                Ret::Cas {
                    succeeded: false,
                    read: Some("2".into()),
                },
                40,
                50,
            ),
        ];
        assert!(ok(&h));
        // Two sequential compare-and-swaps on the same old value cannot both win.
        let h = [
            op(0, put("1"), Ret::Ok, 0, 10),
            op(
                1,
                cas(Some("1"), "2"),
                Ret::Cas {
                    succeeded: true,
                    read: None,
                },
                20,
                30,
            ),
            op(
                2,
                cas(Some("1"), "3"),
                Ret::Cas {
                    succeeded: true,
                    read: None,
                },
                40,
                50,
            ),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = op(0, put("1"), Ret::Ok, 0, 10);
        a.key = "a".into();
        let mut b = op(1, Call::Get, val(Some("1")), 20, 30);
        b.key = "b".into();
        let v = check(&[a, b]).expect_err("b was never written");
        assert_eq!(v.key, "b");
        assert!(v.to_string().contains("not linearizable"));
    }

    #[test]
    fn many_unknown_writes_stay_within_budget() {
        // 60 writes of unknown outcome, all concurrent with everything after them
        // (as when a member dies under load), between reads that see one of them.
        let mut h = vec![op(0, put("0"), Ret::Ok, 0, 10)];
        for i in 1..=60u64 {
            h.push(op(
                1,
                put(&format!("u{i}")),
                Ret::Unknown,
                10 + i * 10,
                15 + i * 10,
            ));
            h.push(op(
                2,
                Call::Get,
                val(Some(if i < 30 { "0" } else { "u29" })),
                12 + i * 10,
                18 + i * 10,
            ));
        }
        assert!(check(&h).is_ok());
        // A read of a value written only after the read returned is still caught.
        h.push(op(3, Call::Get, val(Some("u60")), 5, 9));
        assert!(check(&h).is_err());
    }

    #[test]
    fn wide_concurrency_stays_within_budget() {
        // 12 clients, each put overlapping all the others, then reads of the last.
        let mut h = Vec::new();
        for c in 0..12u64 {
            h.push(op(c as usize, put(&c.to_string()), Ret::Ok, c, 1000 + c));
        }
        h.push(op(99, Call::Get, val(Some("7")), 2000, 2010));
        h.push(op(99, Call::Get, val(Some("7")), 2020, 2030));
        assert!(ok(&h));
        h.push(op(99, Call::Get, val(Some("3")), 2040, 2050));
        assert!(!ok(&h));
    }
}
