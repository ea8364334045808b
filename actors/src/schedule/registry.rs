//! Schedules by name: the process-wide registry `[schedule] kind`, `--schedule` and
//! `troupe bench --schedule` look names up in. The built-ins (`sequential`, `two-microbatch`,
//! `pipeline`) are registered from the start; a library user registers a schedule of their own
//! with [`register`] (a factory, given the `[schedule]` parameters) or [`register_schedule`] (one
//! instance, under its [`Schedule::name`]) before starting a runtime or a benchmark, and every
//! path that takes a schedule name then accepts it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{Pipeline, Schedule, Sequential, TwoMicroBatch};
use crate::error::{ActorError, Result};

/// What a schedule factory gets: `[schedule]`'s numeric fields and the placement's stage count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleParams {
    /// `[schedule] micro_batches` (positive when set).
    pub micro_batches: Option<usize>,
    /// `[schedule] split_at` (positive when set).
    pub split_at: Option<usize>,
    /// Pipeline stages of the placement.
    pub n_stages: usize,
}

/// Makes a schedule from its parameters.
pub type ScheduleFactory = Arc<dyn Fn(&ScheduleParams) -> Arc<dyn Schedule> + Send + Sync>;

/// Names no registration may take over.
pub const BUILT_IN: [&str; 3] = ["sequential", "two-microbatch", "pipeline"];

static REGISTRY: RwLock<BTreeMap<String, ScheduleFactory>> = RwLock::new(BTreeMap::new());

fn built_in(name: &str, p: &ScheduleParams) -> Option<Arc<dyn Schedule>> {
    Some(match name {
        "sequential" => Arc::new(Sequential),
        "two-microbatch" => Arc::new(TwoMicroBatch {
            split_at: p.split_at,
        }),
        "pipeline" => Arc::new(Pipeline {
            micro_batches: p.micro_batches.unwrap_or(p.n_stages.max(2)),
        }),
        _ => return None,
    })
}

/// Registers `factory` under `name` (replacing an earlier registration of that name). A
/// built-in name or an empty one is refused (`ActorError::Schedule` naming `kind`).
pub fn register(
    name: &str,
    factory: impl Fn(&ScheduleParams) -> Arc<dyn Schedule> + Send + Sync + 'static,
) -> Result<()> {
    if name.is_empty() || BUILT_IN.contains(&name) {
        return Err(ActorError::schedule(
            "kind",
            format!("cannot register a schedule as `{name}` (a built-in name, or empty)"),
        ));
    }
    REGISTRY
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), Arc::new(factory));
    Ok(())
}

/// Registers one schedule instance under its own [`Schedule::name`] (parameters ignored).
pub fn register_schedule(schedule: Arc<dyn Schedule>) -> Result<()> {
    let name = schedule.name().to_string();
    register(&name, move |_| schedule.clone())
}

/// Every name [`lookup`] accepts: the built-ins, then registered names in order.
pub fn names() -> Vec<String> {
    let g = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    BUILT_IN
        .iter()
        .map(|s| s.to_string())
        .chain(g.keys().cloned())
        .collect()
}

/// The schedule registered as `name`, made with `params`; an unknown name is an error on
/// `field` listing the known ones.
pub fn lookup(name: &str, params: &ScheduleParams, field: &str) -> Result<Arc<dyn Schedule>> {
    if let Some(s) = built_in(name, params) {
        return Ok(s);
    }
    let factory = REGISTRY
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned();
    match factory {
        Some(f) => Ok(f(params)),
        None => Err(ActorError::schedule(
            field,
            format!("unknown schedule `{name}` (known: {})", names().join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::ForwardPass;

    struct Named(&'static str);
    impl Schedule for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn run(&self, pass: &mut ForwardPass<'_>) -> Result<()> {
            Sequential.run(pass)
        }
    }

    #[test]
    fn registered_names_are_found_and_built_ins_cannot_be_replaced() {
        let p = ScheduleParams::default();
        assert!(lookup("registry-test-unknown", &p, "kind")
            .err()
            .is_some_and(|e| e
                .to_string()
                .contains("sequential, two-microbatch, pipeline")));
        register_schedule(Arc::new(Named("registry-test-custom"))).unwrap();
        let s = lookup("registry-test-custom", &p, "--schedule").unwrap();
        assert_eq!(s.name(), "registry-test-custom");
        assert!(names().iter().any(|n| n == "registry-test-custom"));
        assert!(register_schedule(Arc::new(Named("sequential"))).is_err());
        assert!(register("", |_| Arc::new(Sequential)).is_err());
        assert_eq!(
            lookup("sequential", &p, "kind").unwrap().name(),
            "sequential"
        );
        let pipe = ScheduleParams { n_stages: 3, ..p };
        assert_eq!(
            lookup("pipeline", &pipe, "kind").unwrap().name(),
            "pipeline"
        );
    }
}
