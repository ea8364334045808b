//! [`SimulatedTransport`]: every rank in this process. A call encodes the request as the wire
//! does, books it on the `[placement.link]` model (when one is given: wire time + latency; the
//! task waits for the arrival), has the destination's [`ExpertServer`] answer it on a blocking
//! thread, and brings the encoded reply back the same way. The seam's in-process double: the
//! same bytes and the same server as MPI, so results are the same bits.

use std::sync::Arc;

use super::server::ExpertServer;
use super::wire::{monotonic_ns, ExpertRequest, Message, Served};
use super::{Call, PeerStats, Stamp, Transport};
use crate::error::ActorError;
use crate::link::Link;

/// All ranks in one process (rank 0 calls, every rank's server answers).
pub struct SimulatedTransport {
    servers: Vec<Arc<ExpertServer>>,
    link: Option<Arc<Link>>,
    stats: Arc<PeerStats>,
    next: std::sync::atomic::AtomicU64,
}

impl SimulatedTransport {
    /// `servers[k]` answers for rank `k`; `link` times the transfers (None: instant).
    pub fn new(servers: Vec<Arc<ExpertServer>>, link: Option<Arc<Link>>) -> SimulatedTransport {
        let n = servers.len();
        SimulatedTransport {
            servers,
            link,
            stats: Arc::new(PeerStats::new(n)),
            next: Default::default(),
        }
    }
}

async fn arrive(link: &Option<Arc<Link>>, what: &'static str, bytes: usize) {
    if let Some(l) = link {
        let at = l.book(what, bytes);
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

impl Transport for SimulatedTransport {
    fn kind(&self) -> &'static str {
        "simulated"
    }
    fn rank(&self) -> usize {
        0
    }
    fn nodes(&self) -> usize {
        self.servers.len()
    }
    fn stats(&self) -> &PeerStats {
        &self.stats
    }

    fn call(&self, node: usize, req: ExpertRequest) -> Call {
        let Some(server) = self.servers.get(node).cloned() else {
            return Box::pin(async move {
                Err(ActorError::Transport {
                    peer: node,
                    message: "no such rank".into(),
                })
            });
        };
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let layer = req.layer;
        let out = Message::Request { id, req }.encode();
        let link = self.link.clone();
        let stats = self.stats.clone();
        Box::pin(async move {
            let start = Stamp::now();
            stats.sent(node, out.len());
            arrive(&link, "dispatch", out.len()).await;
            let back = tokio::task::spawn_blocking(move || {
                let received_ns = monotonic_ns();
                let result = match Message::decode(&out) {
                    Ok(Message::Request { req, .. }) => server.answer(&req),
                    Ok(_) => Err("not a request".into()),
                    Err(e) => Err(e.to_string()),
                };
                let served = Served {
                    received_ns,
                    replied_ns: monotonic_ns(),
                };
                (Message::Reply { id, result, served }.encode(), out.len())
            })
            .await
            .map_err(|e| ActorError::Transport {
                peer: node,
                message: format!("server task: {e}"),
            })?;
            let (back, out_len) = back;
            arrive(&link, "combine", back.len()).await;
            stats.received(node, back.len());
            let (result, served) = super::reply_result(node, Message::decode(&back));
            let end = Stamp::now();
            stats.exchange(node, layer, (out_len, back.len()), (start, end), served);
            result
        })
    }
}
