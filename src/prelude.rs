//! `use troupe::prelude::*;`: the names an embedding service or a schedule author needs.

// research API
pub use troupe_actors::bench::{BenchOptions, BenchReport, LinkRow, ScheduleRow};
pub use troupe_actors::placement::{
    LinkBuilder, LinkSpec, Placement, PlacementBuilder, PlacementSpec,
};
pub use troupe_actors::schedule::{
    register as register_schedule_factory, register_schedule, ScheduleParams,
};
pub use troupe_actors::trace_stats::TraceStats;
pub use troupe_actors::{ForwardPass, MicroBatch, Op, Schedule};
