//! The bytes a [`Transport`](super::Transport) puts on the wire: one message per (layer,
//! micro-batch, destination rank) carrying every row that rank's expert groups need, and one reply
//! carrying their outputs, and when the serving rank had the request ([`Served`]). Little-endian,
//! length-prefixed, checked on decode (a short or inconsistent message is a [`WireError`] naming
//! what was wrong, never a panic).

use troupe_engine::backend::Routing;
use troupe_engine::Tensor;

/// A node's share of one MoE layer for one micro-batch: the rows routed to its experts (`x`,
/// `[rows, hidden]`), their whole routing (`top_k` ids and weights per row) and the experts
/// that got rows (ascending).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertRequest {
    pub layer: u32,
    pub experts: Vec<u32>,
    pub x: Tensor,
    pub routing: Routing,
    pub top_k: u32,
    /// Every row is a generated token's: the serving rank computes them with that kind's
    /// linears (`troupe_engine::kernels::row_kind`), as the sending rank would.
    pub generated_rows: bool,
}

/// The experts' outputs: `[entries, hidden]`, by expert id then row (what `grouped_mlp` makes).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertReply {
    pub experts: Vec<u32>,
    pub rows: Tensor,
}

/// When the serving rank had a request: from receiving it to handing its reply to the wire (decode,
/// expert kernels, encode), in ns of that rank's [`monotonic_ns`] clock. The caller subtracts it
/// from the exchange to get the time on the wire; on one host (one monotonic clock for every
/// process) it also places it in the caller's timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub received_ns: u64,
    pub replied_ns: u64,
}

impl Served {
    /// ns between receiving the request and replying.
    pub fn duration_ns(&self) -> u64 {
        self.replied_ns.saturating_sub(self.received_ns)
    }
}

/// The host's monotonic clock in ns (`CLOCK_MONOTONIC`: one clock for every process of a Linux
/// host, unlike `Instant`, whose values cannot leave the process).
pub fn monotonic_ns() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
            return (ts.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec as u64);
        }
    }
    0
}

/// One message between ranks.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Expert work, answered by a `Reply` with the same id.
    Request { id: u64, req: ExpertRequest },
    /// The answer to request `id`: outputs, or the error the serving rank hit, and when that
    /// rank had the request.
    Reply {
        id: u64,
        result: Result<ExpertReply, String>,
        served: Served,
    },
    /// Stops the receiving thread (sent by a rank to itself at shutdown).
    Stop,
}

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed transport message: {0}")]
pub struct WireError(pub String);

const MAGIC: u32 = 0x5452_5550; // "TRUP"
const KIND_REQUEST: u8 = 1;
const KIND_REPLY_OK: u8 = 2;
const KIND_REPLY_ERR: u8 = 3;
const KIND_STOP: u8 = 4;

impl Message {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u32(MAGIC);
        match self {
            Message::Request { id, req } => {
                w.u8(KIND_REQUEST);
                w.u64(*id);
                w.u32(req.layer);
                w.u32s(&req.experts);
                w.tensor(&req.x);
                w.u32(req.top_k);
                w.u8(req.generated_rows as u8);
                w.u32(req.routing.ids.len() as u32);
                for (ids, ws) in req.routing.ids.iter().zip(&req.routing.weights) {
                    w.u32s(ids);
                    w.f32s(ws);
                }
            }
            Message::Reply {
                id,
                result: Ok(r),
                served,
            } => {
                w.u8(KIND_REPLY_OK);
                w.u64(*id);
                w.served(served);
                w.u32s(&r.experts);
                w.tensor(&r.rows);
            }
            Message::Reply {
                id,
                result: Err(e),
                served,
            } => {
                w.u8(KIND_REPLY_ERR);
                w.u64(*id);
                w.served(served);
                w.u32(e.len() as u32);
                w.0.extend_from_slice(e.as_bytes());
            }
            Message::Stop => w.u8(KIND_STOP),
        }
        w.0
    }

    /// Decodes bytes made by [`Message::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.u32()? != MAGIC {
            return Err(WireError("bad magic".into()));
        }
        let m = match r.u8()? {
            KIND_REQUEST => {
                let id = r.u64()?;
                let layer = r.u32()?;
                let experts = r.u32s()?;
                let x = r.tensor()?;
                let top_k = r.u32()?;
                let generated_rows = match r.u8()? {
                    0 => false,
                    1 => true,
                    k => return Err(WireError(format!("row kind {k} (expected 0 or 1)"))),
                };
                let rows = r.u32()? as usize;
                if rows != x.rows() {
                    return Err(WireError(format!(
                        "{rows} routing rows for {} activation rows",
                        x.rows()
                    )));
                }
                let mut routing = Routing {
                    ids: Vec::with_capacity(rows),
                    weights: Vec::with_capacity(rows),
                };
                for _ in 0..rows {
                    routing.ids.push(r.u32s()?);
                    routing.weights.push(r.f32s()?);
                }
                let req = ExpertRequest {
                    layer,
                    experts,
                    x,
                    routing,
                    top_k,
                    generated_rows,
                };
                Message::Request { id, req }
            }
            KIND_REPLY_OK => {
                let id = r.u64()?;
                let served = r.served()?;
                let experts = r.u32s()?;
                let rows = r.tensor()?;
                Message::Reply {
                    id,
                    result: Ok(ExpertReply { experts, rows }),
                    served,
                }
            }
            KIND_REPLY_ERR => {
                let id = r.u64()?;
                let served = r.served()?;
                let n = r.u32()? as usize;
                let text = String::from_utf8_lossy(r.take(n)?).into_owned();
                Message::Reply {
                    id,
                    result: Err(text),
                    served,
                }
            }
            KIND_STOP => Message::Stop,
            k => return Err(WireError(format!("unknown kind {k}"))),
        };
        if r.at != bytes.len() {
            return Err(WireError(format!("{} trailing bytes", bytes.len() - r.at)));
        }
        Ok(m)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn served(&mut self, s: &Served) {
        self.u64(s.received_ns);
        self.u64(s.replied_ns);
    }
    fn u32s(&mut self, v: &[u32]) {
        self.u32(v.len() as u32);
        for x in v {
            self.u32(*x);
        }
    }
    fn f32s(&mut self, v: &[f32]) {
        self.u32(v.len() as u32);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    /// A matrix: rows, columns, then the data (exact bits).
    fn tensor(&mut self, t: &Tensor) {
        let cols = t.shape().last().copied().unwrap_or(0);
        self.u32(t.rows() as u32);
        self.u32(cols as u32);
        self.0.reserve(t.data().len() * 4);
        for x in t.data() {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                WireError(format!(
                    "needs {n} bytes at offset {}, has {}",
                    self.at,
                    self.b.len()
                ))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn served(&mut self) -> Result<Served, WireError> {
        let received_ns = self.u64()?;
        let replied_ns = self.u64()?;
        Ok(Served {
            received_ns,
            replied_ns,
        })
    }
    fn u32s(&mut self) -> Result<Vec<u32>, WireError> {
        let n = self.u32()? as usize;
        let raw = self.take(n.saturating_mul(4))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn f32s(&mut self) -> Result<Vec<f32>, WireError> {
        Ok(self.u32s()?.into_iter().map(f32::from_bits).collect())
    }
    fn tensor(&mut self) -> Result<Tensor, WireError> {
        let rows = self.u32()? as usize;
        let cols = self.u32()? as usize;
        let n = rows.saturating_mul(cols);
        let raw = self.take(n.saturating_mul(4))?;
        let data = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::new(vec![rows, cols], data).map_err(|e| WireError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Message {
        Message::Request {
            id: 7,
            req: ExpertRequest {
                layer: 2,
                experts: vec![1, 5],
                x: Tensor::new(
                    vec![2, 3],
                    vec![1.0, -0.0, f32::MIN_POSITIVE, 4.5, 5.0, 6.0],
                )
                .unwrap(),
                routing: Routing {
                    ids: vec![vec![1, 3], vec![5, 1]],
                    weights: vec![vec![0.25, 0.75], vec![0.5, 0.5]],
                },
                top_k: 2,
                generated_rows: true,
            },
        }
    }

    #[test]
    fn every_kind_round_trips_bit_exactly() {
        let reply = Message::Reply {
            id: 9,
            result: Ok(ExpertReply {
                experts: vec![5],
                rows: Tensor::new(vec![1, 3], vec![0.1, 0.2, -0.3]).unwrap(),
            }),
            served: Served {
                received_ns: 1_000,
                replied_ns: u64::MAX,
            },
        };
        let err = Message::Reply {
            id: 3,
            result: Err("rank 2: layer 9 has no experts".into()),
            served: Served::default(),
        };
        for m in [request(), reply, err, Message::Stop] {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), m);
        }
        // -0.0 keeps its sign bit.
        let Message::Request { req, .. } = Message::decode(&request().encode()).unwrap() else {
            panic!("not a request");
        };
        assert_eq!(req.x.data()[1].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn truncated_or_padded_messages_are_errors() {
        let bytes = request().encode();
        for cut in [0, 3, 5, 13, bytes.len() - 1] {
            assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Message::decode(&long).unwrap_err().0.contains("trailing"));
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(Message::decode(&bad).unwrap_err().0.contains("magic"));
    }

    #[test]
    fn a_request_carries_its_row_kind_and_rejects_an_unknown_one() {
        let Message::Request { id, mut req } = request() else {
            panic!("not a request");
        };
        req.generated_rows = false;
        let prompt = Message::Request { id, req }.encode();
        let generated = request().encode();
        let Message::Request { req, .. } = Message::decode(&prompt).unwrap() else {
            panic!("not a request");
        };
        assert!(!req.generated_rows);
        // The one byte where the two encodings differ is the kind; 2 is no kind.
        let at = (0..prompt.len())
            .find(|&i| prompt[i] != generated[i])
            .unwrap();
        let mut bad = generated;
        bad[at] = 2;
        assert!(Message::decode(&bad).unwrap_err().0.contains("row kind"));
    }
}
