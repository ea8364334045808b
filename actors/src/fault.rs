//! Fault injection. A spec is `actor:NAME,after:N,kind:panic|hang[,times:K]`, several separated
//! by `;` — from the `TROUPE_FAULT` environment variable or given programmatically (tests should
//! use the programmatic form: the environment is process-global). `after:N` lets the actor
//! handle N messages (attempts, re-issues included) and fails the next one; `times:K` (default 1)
//! fails K attempts in a row, which is how "an actor failing repeatedly" is produced.
//!
//! [`FaultPlan::from_env`] is the one public check of `TROUPE_FAULT`: a malformed value (bad
//! syntax, a repeated key, a number out of range, non-UTF-8 bytes) is an `ActorError::Fault`
//! whatever runtime runs, so front-ends call it even when they do not start the actors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{ActorError, Result};

/// How an injected fault fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The actor panics while handling the message.
    Panic,
    /// The actor never finishes the message (caught by the supervisor's deadline).
    Hang,
}

/// One fault rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub actor: String,
    pub after: usize,
    pub kind: FaultKind,
    pub times: usize,
}

/// A set of faults keyed by actor name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub faults: Vec<Fault>,
}

impl FaultPlan {
    /// Parses `actor:NAME,after:N,kind:K[,times:T];...`. Empty text → no faults.
    pub fn parse(text: &str) -> Result<FaultPlan> {
        let mut faults = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let err = |m: String| ActorError::Fault {
                spec: part.to_string(),
                message: m,
            };
            let (mut actor, mut after, mut kind, mut times) = (None, None, None, 1usize);
            let mut seen: Vec<&str> = Vec::new();
            for kv in part.split(',').map(str::trim) {
                let (k, v) = kv
                    .split_once(':')
                    .ok_or_else(|| err(format!("`{kv}` is not `key:value`")))?;
                let k = k.trim();
                if seen.contains(&k) {
                    return Err(err(format!("key `{k}` is given twice")));
                }
                seen.push(k);
                match k {
                    "actor" if !v.trim().is_empty() => actor = Some(v.trim().to_string()),
                    "actor" => return Err(err("`actor` is empty".into())),
                    "after" => {
                        after = Some(v.trim().parse::<usize>().map_err(|_| {
                            err(format!("`after:{v}` is not a non-negative integer"))
                        })?)
                    }
                    "times" => {
                        times = v
                            .trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|&t| t >= 1)
                            .ok_or_else(|| err(format!("`times:{v}` is not a positive integer")))?
                    }
                    "kind" => {
                        kind = Some(match v.trim() {
                            "panic" => FaultKind::Panic,
                            "hang" => FaultKind::Hang,
                            other => {
                                return Err(err(format!("`kind:{other}`: expected panic or hang")))
                            }
                        })
                    }
                    other => {
                        return Err(err(format!(
                            "unknown key `{other}` (known: actor, after, kind, times)"
                        )))
                    }
                }
            }
            faults.push(Fault {
                actor: actor.ok_or_else(|| err("missing `actor:NAME`".into()))?,
                after: after.ok_or_else(|| err("missing `after:N`".into()))?,
                kind: kind.ok_or_else(|| err("missing `kind:panic|hang`".into()))?,
                times,
            });
        }
        Ok(FaultPlan { faults })
    }

    /// `TROUPE_FAULT` from the environment (unset → no faults; malformed → `ActorError::Fault`).
    pub fn from_env() -> Result<FaultPlan> {
        match std::env::var("TROUPE_FAULT") {
            Ok(s) => FaultPlan::parse(&s),
            Err(std::env::VarError::NotPresent) => Ok(FaultPlan::default()),
            Err(std::env::VarError::NotUnicode(raw)) => Err(ActorError::Fault {
                spec: raw.to_string_lossy().into_owned(),
                message: "TROUPE_FAULT is not valid UTF-8".into(),
            }),
        }
    }

    /// Checks every rule names an actor that exists.
    pub fn validate(&self, actor_names: &[String]) -> Result<()> {
        for f in &self.faults {
            if !actor_names.contains(&f.actor) {
                let mut sample: Vec<&str> =
                    actor_names.iter().map(String::as_str).take(8).collect();
                if actor_names.len() > 8 {
                    sample.push("…");
                }
                return Err(ActorError::Fault {
                    spec: f.actor.clone(),
                    message: format!(
                        "no actor named `{}` (actors: {})",
                        f.actor,
                        sample.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// The per-actor trigger for `name` (None when no rule targets it).
    pub fn trigger_for(&self, name: &str) -> Option<Arc<FaultTrigger>> {
        let rules: Vec<Fault> = self
            .faults
            .iter()
            .filter(|f| f.actor == name)
            .cloned()
            .collect();
        (!rules.is_empty()).then(|| {
            Arc::new(FaultTrigger {
                rules,
                attempts: AtomicUsize::new(0),
                fired: AtomicUsize::new(0),
            })
        })
    }

    /// Triggers for every targeted actor.
    pub fn triggers(&self) -> HashMap<String, Arc<FaultTrigger>> {
        self.faults
            .iter()
            .filter_map(|f| self.trigger_for(&f.actor).map(|t| (f.actor.clone(), t)))
            .collect()
    }
}

/// Attempt counter of one actor; survives restarts (it lives outside the actor).
#[derive(Debug)]
pub struct FaultTrigger {
    rules: Vec<Fault>,
    attempts: AtomicUsize,
    fired: AtomicUsize,
}

impl FaultTrigger {
    /// Counts one attempt; returns the fault to inject now, if any.
    pub fn on_attempt(&self) -> Option<FaultKind> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        let hit = self
            .rules
            .iter()
            .find(|r| n.checked_sub(r.after).is_some_and(|k| k < r.times))
            .map(|r| r.kind);
        if hit.is_some() {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
    /// How many faults fired so far.
    pub fn fired(&self) -> usize {
        self.fired.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(spec: &str) -> String {
        match FaultPlan::parse(spec) {
            Err(ActorError::Fault { message, .. }) => message,
            other => panic!("{spec}: expected a fault-spec error, got {other:?}"),
        }
    }

    #[test]
    fn repeated_keys_and_out_of_range_numbers_are_rejected() {
        assert!(message("actor:a,actor:b,after:1,kind:panic").contains("`actor` is given twice"));
        assert!(message("actor:a,after:1,after:2,kind:panic").contains("`after` is given twice"));
        assert!(message("actor:a,after:99999999999999999999999,kind:panic").contains("after:"));
        assert!(message("actor:a,after:-1,kind:panic").contains("after:"));
        assert!(message("actor:a,after:1,kind:panic,times:0").contains("times:"));
    }

    #[test]
    fn a_rule_at_the_end_of_the_counter_range_fires_without_overflow() {
        let plan = FaultPlan::parse(&format!(
            "actor:a,after:{},kind:panic,times:{}",
            usize::MAX - 1,
            usize::MAX
        ))
        .expect("valid spec");
        let t = plan.trigger_for("a").expect("trigger");
        t.attempts.store(usize::MAX - 2, Ordering::SeqCst);
        assert_eq!(t.on_attempt(), None);
        assert_eq!(t.on_attempt(), Some(FaultKind::Panic));
        assert_eq!(t.fired(), 1);
    }
}

#[cfg(all(test, unix))]
mod env_tests {
    use super::*;

    /// The only unit test touching `TROUPE_FAULT` (the environment is process-global).
    #[test]
    fn from_env_rejects_a_malformed_or_non_utf8_value() {
        use std::os::unix::ffi::OsStrExt;
        std::env::set_var("TROUPE_FAULT", "actor:x,after:1,kind:explode");
        let bad = FaultPlan::from_env();
        std::env::set_var("TROUPE_FAULT", std::ffi::OsStr::from_bytes(b"actor:\xff"));
        let not_utf8 = FaultPlan::from_env();
        std::env::remove_var("TROUPE_FAULT");
        let unset = FaultPlan::from_env();
        assert!(matches!(bad, Err(ActorError::Fault { .. })), "{bad:?}");
        match not_utf8 {
            Err(ActorError::Fault { message, .. }) => assert!(message.contains("UTF-8")),
            other => panic!("non-UTF-8 TROUPE_FAULT: {other:?}"),
        }
        assert_eq!(unset.expect("unset"), FaultPlan::default());
    }
}
