//! Unit tests of `CpuBackend`: device handles are refused, op calls are counted with no bytes
//! moved, and the MoE combine gives the same bits whatever grouping the expert rows come in.

use std::sync::Arc;

use crate::backend::{Backend, Routing};
use crate::device_tensor::{BackendId, DeviceRouting, DeviceTensor, Location};
use crate::error::{EngineError, PassSite};
use crate::kernels::CpuBackend;
use crate::tensor::Tensor;
use crate::weights::Weight;

fn t(rows: usize, cols: usize, seed: f32) -> DeviceTensor {
    let v = (0..rows * cols)
        .map(|i| ((i as f32 + seed) * 0.37).sin())
        .collect();
    DeviceTensor::from_host(Tensor::from_flat(cols, v))
}

fn w(name: &str, rows: usize, cols: usize, seed: f32) -> Weight {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as f32 * 1.3 + seed) * 0.11).cos() * 0.2)
        .collect();
    Weight::from_f32(name, vec![rows, cols], &v)
}

#[test]
fn device_handles_are_refused_and_calls_are_counted() {
    let be = CpuBackend::new();
    let dev = DeviceTensor::on_device(BackendId::fresh(), 1, 4, Arc::new(0u8));
    match be.add(&dev, &dev) {
        Err(EngineError::WrongDevice { op, backend, .. }) => {
            assert_eq!((op.as_str(), backend.as_str()), ("add", "cpu"))
        }
        other => panic!("expected WrongDevice, got {other:?}"),
    }
    let x = t(2, 4, 0.0);
    let y = be.add(&x, &x).unwrap();
    be.check_finite(&y, PassSite::Head).unwrap();
    assert_eq!(y.location(), Location::Host);
    let c = be.counters();
    assert_eq!((c.h2d_bytes, c.d2h_bytes), (0, 0));
    assert_eq!(c.launches.get("add"), Some(&2));
    assert_eq!(c.launches.get("check_finite"), Some(&1));
    let before = be.counters();
    be.argmax(&y).unwrap();
    assert_eq!(be.counters().since(&before).launches.len(), 1);
}

#[test]
fn combine_sums_slots_in_expert_order_whatever_the_grouping() {
    let be = CpuBackend::new();
    let (hidden, inter, n) = (8, 6, 5);
    let experts: Vec<_> = (0..4)
        .map(|e| {
            let s = e as f32;
            (
                w("g", inter, hidden, s),
                w("u", inter, hidden, s + 9.0),
                w("d", hidden, inter, s + 5.0),
            )
        })
        .collect();
    let ew = |ids: &[u32]| -> Vec<crate::backend::ExpertWeights<'_>> {
        ids.iter()
            .map(|&e| {
                let (g, u, d) = &experts[e as usize];
                crate::backend::ExpertWeights {
                    id: e,
                    gate: g,
                    up: u,
                    down: d,
                }
            })
            .collect()
    };
    let routing = Routing {
        ids: vec![vec![0, 2], vec![1, 3], vec![0, 3], vec![2, 3], vec![0, 1]],
        weights: vec![
            vec![0.7, 0.3],
            vec![0.5, 0.5],
            vec![0.9, 0.1],
            vec![0.2, 0.8],
            vec![0.6, 0.4],
        ],
    };
    let r = DeviceRouting::from_host(routing.clone(), 2);
    let (x, res, shared) = (t(n, hidden, 1.0), t(n, hidden, 2.0), t(n, hidden, 3.0));
    let all = be.grouped_mlp(&x, &r, &ew(&[0, 1, 2, 3])).unwrap();
    let one = be.moe_combine(&res, &r, &[all], Some(&shared)).unwrap();
    let parts = [
        be.grouped_mlp(&x, &r, &ew(&[1, 3])).unwrap(),
        be.grouped_mlp(&x, &r, &ew(&[0, 2])).unwrap(),
    ];
    let split = be.moe_combine(&res, &r, &parts, Some(&shared)).unwrap();
    assert_eq!(one.host().unwrap().data(), split.host().unwrap().data());
    // Row 0 by hand: residual + ((0 + w0·y0) + w2·y2 + shared), each expert alone.
    let h = |d: &DeviceTensor| d.host().unwrap().clone();
    let x0 = DeviceTensor::from_host(h(&x).slice_rows(0, 1));
    let y = |e: u32| {
        let out = crate::kernels::moe::mlp(&h(&x0), &ew(&[e])[0]).unwrap();
        out.row(0).to_vec()
    };
    let (y0, y2) = (y(0), y(2));
    for c in 0..hidden {
        let mut m = 0.0f32;
        m += 0.7 * y0[c];
        m += 0.3 * y2[c];
        m += h(&shared).row(0)[c];
        let want = h(&res).row(0)[c] + m;
        assert_eq!(want.to_bits(), h(&one).row(0)[c].to_bits(), "column {c}");
    }
    assert!(be.moe_combine(&res, &r, &parts[..1], None).is_err());
}
