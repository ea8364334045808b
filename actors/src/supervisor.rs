//! The supervision tree: the root actor supervises one `stage{S}` actor per pipeline stage; each
//! stage actor owns its stage's driver task and supervises the block actors of its layers
//! (attention, router, shared, dense MLP, expert groups). A failed child (panic, or killed by
//! the watchdog after missing its deadline) is respawned from its `Child` record — same weights
//! (`Arc`s into the loaded model), same queue, same in-flight envelopes, which it re-issues. More
//! than `max_restarts` restarts within `window` → the child is declared down: its requests fail
//! with `ActorError::ActorDown`, everything else proceeds. A failed stage actor is restarted by
//! the root the same way: the new instance replaces the old one's children (which re-issue their
//! envelopes) and re-issues the stage's in-flight calls; past the budget the stage is down and
//! its calls fail with `ActorDown`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::actors::Child;
use crate::error::ActorError;
use crate::placement::SupervisionSpec;
use crate::stage::{stage_driver, StageCall, StageRun};

/// The child a supervision event reports as gone (failed or terminated) and why; `None` for
/// events that need no action (starts, process-group changes).
fn failed_child(ev: SupervisionEvent) -> Option<(ActorCell, String)> {
    match ev {
        SupervisionEvent::ActorFailed(c, e) => Some((c, e.to_string())),
        SupervisionEvent::ActorTerminated(c, _, reason) => {
            Some((c, reason.unwrap_or_else(|| "terminated".into())))
        }
        _ => None,
    }
}

/// Everything a stage actor is started (and restarted) with.
#[derive(Clone)]
pub struct StageArgs {
    pub run: StageRun,
    pub children: Vec<Arc<dyn Child>>,
    /// The children's current instances (index-aligned with `children`), shared across stage
    /// instances so a restarted stage can stop the previous one's.
    pub cells: Arc<Mutex<Vec<Option<ActorCell>>>>,
    pub rx: flume::Receiver<StageCall>,
    pub policy: SupervisionSpec,
    pub shutting_down: Arc<AtomicBool>,
}

impl StageArgs {
    fn cells(&self) -> std::sync::MutexGuard<'_, Vec<Option<ActorCell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct ChildRecord {
    child: Arc<dyn Child>,
    restarts: VecDeque<Instant>,
    killed_for_deadline: bool,
    down: bool,
}

pub struct StageState {
    index: usize,
    args: StageArgs,
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
    /// An injected fault: the stage actor panics (its root restarts it).
    Crash,
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
        // A restarted stage: stop the previous instance's children; the new ones re-issue
        // their in-flight envelopes.
        for c in a.cells().iter().flatten() {
            c.kill();
        }
        let mut children = Vec::with_capacity(a.children.len());
        let mut cells = Vec::with_capacity(a.children.len());
        for c in &a.children {
            let down = c.is_down();
            cells.push(if down {
                None
            } else {
                Some(c.clone().spawn(me.get_cell()).await?)
            });
            children.push(ChildRecord {
                child: c.clone(),
                restarts: VecDeque::new(),
                killed_for_deadline: false,
                down,
            });
        }
        *a.cells() = cells;
        let mut tasks = Vec::new();
        // Re-issue the calls the previous instance had in flight, then take new ones.
        let mut crashed = false;
        for (id, c) in a.run.inflight.reissue(|_| true) {
            if !crashed && !a.run.start(id, c) {
                crashed = true;
            }
        }
        if crashed {
            me.send_message(StageMsg::Crash)?;
        } else {
            tasks.push(tokio::spawn(stage_driver(
                a.run.clone(),
                a.rx.clone(),
                me.clone(),
            )));
        }
        let period =
            (a.policy.deadline / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let me2 = me.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if me2.send_message(StageMsg::Tick).is_err() {
                    break;
                }
            }
        }));
        Ok(StageState {
            index: a.run.index,
            policy: a.policy,
            shutting_down: a.shutting_down.clone(),
            args: a,
            children,
            tasks,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<StageMsg>,
        msg: StageMsg,
        st: &mut StageState,
    ) -> Result<(), ActorProcessingErr> {
        if let StageMsg::Crash = msg {
            panic!("injected fault: actor `stage{}` panics", st.index);
        }
        let cells = st.args.cells().clone();
        for (r, cell) in st
            .children
            .iter_mut()
            .zip(&cells)
            .filter(|(r, _)| !r.down && !r.killed_for_deadline)
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
                if let Some(c) = cell {
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
        let Some((cell, why)) = failed_child(ev) else {
            return Ok(());
        };
        if st.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(i) = st
            .args
            .cells()
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        st.args.cells()[i] = None;
        let r = &mut st.children[i];
        let why = if r.killed_for_deadline {
            "missed its deadline (hung)".to_string()
        } else {
            why
        };
        r.killed_for_deadline = false;
        if let Some(reason) = over_budget(&mut r.restarts, &st.policy, &why) {
            r.down = true;
            crate::metrics::actor_down(r.child.name());
            eprintln!(
                "troupe-actors: stage{}: `{}` {reason}; declaring it down",
                st.index,
                r.child.name()
            );
            r.child.clone().declare_down(reason);
            return Ok(());
        }
        crate::metrics::actor_restart(r.child.name());
        let cell = r.child.clone().spawn(me.get_cell()).await?;
        st.args.cells()[i] = Some(cell);
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
        if st.shutting_down.load(Ordering::SeqCst) {
            for c in st.args.cells().iter().flatten() {
                c.kill();
            }
        }
        Ok(())
    }
}

/// The root of the tree: starts the stage actors and restarts a failed one (same policy as the
/// stages apply to their children); past the budget the stage is declared down.
pub struct RootActor;

struct StageSlot {
    args: StageArgs,
    cell: Option<ActorCell>,
    restarts: VecDeque<Instant>,
}

pub struct RootState {
    stages: Vec<StageSlot>,
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
        let mut slots = Vec::new();
        for s in stages {
            let (r, _) = Actor::spawn_linked(None, StageActor, s.clone(), me.get_cell()).await?;
            slots.push(StageSlot {
                args: s,
                cell: Some(r.get_cell()),
                restarts: VecDeque::new(),
            });
        }
        Ok(RootState { stages: slots })
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        ev: SupervisionEvent,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, why)) = failed_child(ev) else {
            return Ok(());
        };
        let Some(slot) = st
            .stages
            .iter_mut()
            .find(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        slot.cell = None;
        if slot.args.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let name = format!("stage{}", slot.args.run.index);
        let policy = slot.args.policy;
        if let Some(reason) = over_budget(&mut slot.restarts, &policy, &why) {
            eprintln!("troupe-actors: `{name}` {reason}; declaring it down");
            crate::metrics::actor_down(&name);
            declare_stage_down(&slot.args, name, reason);
            return Ok(());
        }
        eprintln!("troupe-actors: `{name}` failed ({why}); restarting it");
        crate::metrics::actor_restart(&name);
        let (r, _) =
            Actor::spawn_linked(None, StageActor, slot.args.clone(), me.get_cell()).await?;
        slot.cell = Some(r.get_cell());
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<()>,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        for s in &st.stages {
            if let Some(c) = &s.cell {
                let _ = c.stop_and_wait(None, Some(Duration::from_secs(5))).await;
            }
        }
        Ok(())
    }
}

/// A stage that cannot be kept up: its children stop, and every call in flight or queued for it
/// fails with `ActorDown` (the batcher fails those requests).
fn declare_stage_down(args: &StageArgs, actor: String, reason: String) {
    for c in args.cells().iter().flatten() {
        c.kill();
    }
    let err = ActorError::ActorDown {
        actor,
        reason,
        rows: None,
    };
    let calls = args.run.inflight.drain();
    let rx = args.rx.clone();
    tokio::spawn(async move {
        for c in calls {
            let _ = c.reply.send_async(Err(err.clone())).await;
        }
        while let Ok(c) = rx.recv_async().await {
            let _ = c.reply.send_async(Err(err.clone())).await;
        }
    });
}

/// Records a failure now in `restarts` (dropping those older than the window); the reason to
/// declare the actor down when that makes more than `policy.max_restarts` within the window.
fn over_budget(
    restarts: &mut VecDeque<Instant>,
    policy: &SupervisionSpec,
    why: &str,
) -> Option<String> {
    let now = Instant::now();
    restarts.push_back(now);
    while restarts
        .front()
        .is_some_and(|t| now.duration_since(*t) > policy.window)
    {
        restarts.pop_front();
    }
    (restarts.len() > policy.max_restarts).then(|| {
        format!(
            "failed {} times within {:?} (last: {why})",
            restarts.len(),
            policy.window
        )
    })
}
