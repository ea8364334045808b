use super::schedules::{one_f_one_b, zb1p};
use super::{run, OpTimes};

/// DualPipe paper (arXiv 2412.19437) Table 2, with B the full backward: 1F1B (PP−1)(F+B).
#[test]
fn one_f_one_b_bubble_is_the_closed_form() {
    for (f, b_in, w) in [(1.0, 1.0, 1.0), (3.0, 4.0, 2.0), (2.0, 5.0, 1.5)] {
        let t = OpTimes {
            f,
            b: b_in,
            w,
            fb: f + b_in,
        };
        let full_b = b_in + w;
        for pp in [2, 4, 8] {
            for m in [pp, 2 * pp, 3 * pp + 1] {
                let r = run(&one_f_one_b(pp, m), t, [m, 0]).unwrap();
                let want = (pp - 1) as f64 * (f + full_b);
                for (d, got) in r.bubble.iter().enumerate() {
                    assert!(
                        (got - want).abs() < 1e-9,
                        "pp {pp} m {m} device {d}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// ZB1P: (PP−1)(F+B−2W), B the full backward (= B_input + W).
#[test]
fn zb1p_bubble_is_the_closed_form() {
    for (f, b_in, w) in [(1.0, 1.0, 1.0), (3.0, 3.0, 2.0), (2.0, 2.5, 1.5)] {
        let t = OpTimes {
            f,
            b: b_in,
            w,
            fb: f + b_in,
        };
        let full_b = b_in + w;
        for pp in [2, 4, 8] {
            for m in [pp, 2 * pp, 3 * pp + 1] {
                let r = run(&zb1p(pp, m), t, [m, 0]).unwrap();
                let want = (pp - 1) as f64 * (f + full_b - 2.0 * w);
                let worst = r.bubble.iter().copied().fold(0.0, f64::max);
                assert!(
                    (worst - want).abs() < 1e-9,
                    "pp {pp} m {m} f {f} b {b_in} w {w}: bubbles {:?} vs {want}",
                    r.bubble
                );
            }
        }
    }
}

#[test]
fn a_list_that_waits_on_itself_is_a_deadlock_error() {
    use super::TrainOp;
    // Stage 0 runs B of micro-batch 0 before any F reached the last stage.
    let lists = vec![
        vec![TrainOp::BW { dir: 0, mb: 0 }, TrainOp::F { dir: 0, mb: 0 }],
        vec![TrainOp::F { dir: 0, mb: 0 }, TrainOp::BW { dir: 0, mb: 0 }],
    ];
    let t = OpTimes {
        f: 1.0,
        b: 1.0,
        w: 1.0,
        fb: 2.0,
    };
    assert!(run(&lists, t, [1, 0])
        .unwrap_err()
        .to_string()
        .contains("deadlock"));
}

/// DualPipe: (PP/2−1)(F&B+B−3W), B the full backward, on the devices that idle most (the
/// middle ones). The table's form holds when a backward-for-input chunk takes as long as a
/// forward one (as drawn in the paper); with F ≠ B_input the simulated schedule idles
/// (PP/2−1)(F − B_input) more, which the last case checks.
#[test]
fn dualpipe_bubble_is_the_closed_form() {
    use super::schedules::dualpipe;
    for (f, b_in, w, fb) in [
        (1.0, 1.0, 1.0, 2.5),
        (2.0, 2.0, 1.0, 4.0),
        (2.0, 2.0, 1.0, 3.0),
        (3.0, 3.0, 0.5, 5.0),
        (3.0, 2.5, 1.5, 6.0),
    ] {
        let t = OpTimes { f, b: b_in, w, fb };
        let full_b = b_in + w;
        for pp in [2, 4, 6, 8] {
            for m in [2 * pp, 2 * pp + 4, 4 * pp] {
                let lists = dualpipe(pp, m).unwrap();
                let r = run(&lists, t, [m / 2, m / 2]).unwrap();
                let half = (pp / 2 - 1) as f64;
                let want = half * (fb + full_b - 3.0 * w) + half * (f - b_in);
                let worst = r.bubble.iter().copied().fold(0.0, f64::max);
                assert!(
                    (worst - want).abs() < 1e-9,
                    "pp {pp} m {m} F {f} B {b_in} W {w} F&B {fb}: bubbles {:?} vs {want}",
                    r.bubble
                );
            }
        }
    }
    assert!(dualpipe(3, 12).is_none());
    assert!(dualpipe(4, 6).is_none());
}

/// The table's activation column, the most micro-batches a device keeps activations for:
/// 1F1B and ZB1P PP, DualPipe PP+1 (with twice the parameters: each device holds two stages).
#[test]
fn peak_activations_are_the_tables_column() {
    use super::schedules::dualpipe;
    let t = OpTimes {
        f: 2.0,
        b: 2.0,
        w: 1.0,
        fb: 4.0,
    };
    for pp in [2usize, 4, 6, 8] {
        for m in [2 * pp, 4 * pp] {
            let most = |peaks: &[usize]| peaks.iter().copied().max().unwrap_or(0);
            let r = run(&one_f_one_b(pp, m), t, [m, 0]).unwrap();
            assert_eq!(
                most(&r.peak_activations),
                pp,
                "1F1B pp {pp} m {m}: {:?}",
                r.peak_activations
            );
            let r = run(&zb1p(pp, m), t, [m, 0]).unwrap();
            assert_eq!(
                most(&r.peak_activations),
                pp,
                "ZB1P pp {pp} m {m}: {:?}",
                r.peak_activations
            );
            let r = run(&dualpipe(pp, m).unwrap(), t, [m / 2, m / 2]).unwrap();
            assert_eq!(
                most(&r.peak_activations),
                pp + 1,
                "DualPipe pp {pp} m {m}: {:?}",
                r.peak_activations
            );
        }
    }
}
