//! The supervision tree: the root actor supervises one `stage{S}` actor per pipeline stage; each
//! stage actor owns its stage's driver task and supervises the block actors of its layers
//! (attention, router, shared, dense MLP, expert groups). A failed child (panic, or killed by
//! the watchdog after missing its deadline) is respawned from its `Child` record — same weights
//! (`Arc`s into the loaded model), same queue, same in-flight envelope, which it re-issues. More
//! than `max_restarts` restarts within `window` → the child is declared down: its requests fail
//! with `ActorError::ActorDown`, everything else proceeds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::actors::Child;
use crate::placement::SupervisionSpec;
use crate::stage::{stage_driver, StageCall, Wiring};

/// Everything a stage actor is started with.
pub struct StageArgs {
    pub index: usize,
    pub children: Vec<Arc<dyn Child>>,
    pub rx: flume::Receiver<StageCall>,
    pub wiring: Arc<Wiring>,
    pub policy: SupervisionSpec,
    pub shutting_down: Arc<AtomicBool>,
}

struct ChildRecord {
    child: Arc<dyn Child>,
    cell: Option<ActorCell>,
    restarts: VecDeque<Instant>,
    killed_for_deadline: bool,
    down: bool,
}

pub struct StageState {
    index: usize,
    children: Vec<ChildRecord>,
    policy: SupervisionSpec,
    shutting_down: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Control messages of a stage actor.
#[derive(Debug)]
pub enum StageMsg {
    /// Watchdog tick: kill children past their deadline.
    Tick,
}

pub struct StageActor;

impl Actor for StageActor {
    type Msg = StageMsg;
    type State = StageState;
    type Arguments = StageArgs;

    async fn pre_start(
        &self,
        me: ActorRef<StageMsg>,
        a: StageArgs,
    ) -> Result<StageState, ActorProcessingErr> {
        let mut children = Vec::with_capacity(a.children.len());
        for c in a.children {
            let cell = c.clone().spawn(me.get_cell()).await?;
            children.push(ChildRecord {
                child: c,
                cell: Some(cell),
                restarts: VecDeque::new(),
                killed_for_deadline: false,
                down: false,
            });
        }
        let driver = tokio::spawn(stage_driver(a.index, a.rx, a.wiring));
        let period =
            (a.policy.deadline / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let me2 = me.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if me2.send_message(StageMsg::Tick).is_err() {
                    break;
                }
            }
        });
        Ok(StageState {
            index: a.index,
            children,
            policy: a.policy,
            shutting_down: a.shutting_down,
            tasks: vec![driver, ticker],
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<StageMsg>,
        _msg: StageMsg,
        st: &mut StageState,
    ) -> Result<(), ActorProcessingErr> {
        for r in st
            .children
            .iter_mut()
            .filter(|r| !r.down && !r.killed_for_deadline)
        {
            let limit = st.policy.deadline * r.child.deadline_factor();
            if r.child.busy_since().is_some_and(|t| t.elapsed() > limit) {
                eprintln!(
                    "troupe-actors: stage{}: `{}` missed its {:?} deadline; treating it as crashed",
                    st.index,
                    r.child.name(),
                    limit
                );
                r.killed_for_deadline = true;
                if let Some(c) = &r.cell {
                    c.kill();
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<StageMsg>,
        ev: SupervisionEvent,
        st: &mut StageState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match ev {
            SupervisionEvent::ActorFailed(c, e) => (c, e.to_string()),
            SupervisionEvent::ActorTerminated(c, _, reason) => {
                (c, reason.unwrap_or_else(|| "terminated".into()))
            }
            _ => return Ok(()),
        };
        if st.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(r) = st
            .children
            .iter_mut()
            .find(|r| r.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        let why = if r.killed_for_deadline {
            "missed its deadline (hung)".to_string()
        } else {
            why
        };
        r.killed_for_deadline = false;
        r.cell = None;
        let now = Instant::now();
        r.restarts.push_back(now);
        while r
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > st.policy.window)
        {
            r.restarts.pop_front();
        }
        if r.restarts.len() > st.policy.max_restarts {
            r.down = true;
            crate::metrics::actor_down(r.child.name());
            let reason = format!(
                "failed {} times within {:?} (last: {why})",
                r.restarts.len(),
                st.policy.window
            );
            eprintln!(
                "troupe-actors: stage{}: `{}` {reason}; declaring it down",
                st.index,
                r.child.name()
            );
            r.child.clone().declare_down(reason);
            return Ok(());
        }
        crate::metrics::actor_restart(r.child.name());
        r.cell = Some(r.child.clone().spawn(me.get_cell()).await?);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<StageMsg>,
        st: &mut StageState,
    ) -> Result<(), ActorProcessingErr> {
        for t in &st.tasks {
            t.abort();
        }
        for r in &st.children {
            if let Some(c) = &r.cell {
                c.kill();
            }
        }
        Ok(())
    }
}

/// The root of the tree: starts the stage actors; reports (does not restart) a failed stage.
pub struct RootActor;

pub struct RootState {
    stages: Vec<ActorCell>,
}

impl Actor for RootActor {
    type Msg = ();
    type State = RootState;
    type Arguments = Vec<StageArgs>;

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        stages: Vec<StageArgs>,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut cells = Vec::new();
        for s in stages {
            let (r, _) = Actor::spawn_linked(None, StageActor, s, me.get_cell()).await?;
            cells.push(r.get_cell());
        }
        Ok(RootState { stages: cells })
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<()>,
        ev: SupervisionEvent,
        _st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(c, e) = ev {
            eprintln!("troupe-actors: stage actor {:?} failed: {e}", c.get_id());
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<()>,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        for s in &st.stages {
            let _ = s.stop_and_wait(None, Some(Duration::from_secs(5))).await;
        }
        Ok(())
    }
}
