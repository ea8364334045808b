//! Every hand-written kernel in `ptx/kernels/*.ptx` must parse and decode in the
//! interpreter; the real tensor-core GEMM and the fp8 kernels run race-free.

use crate::helpers::{kernel_files, kernel_source};
use troupe_ptx_interp::Module;

#[test]
fn every_kernel_file_parses() {
    let files = kernel_files();
    let mut failures = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).expect("readable kernel file");
        match Module::parse(&src) {
            Ok(m) => {
                if m.kernel_names().is_empty() {
                    failures.push(format!("{}: no .entry kernels", f.display()));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "kernel files failing to parse:\n{}",
        failures.join("\n")
    );
}

fn load(name: &str) -> Module {
    Module::parse(&kernel_source(name)).expect("kernel parses")
}

/// The real tensor-core GEMM (cp.async double buffering + ldmatrix + mma.sync) runs
/// race-free under the interpreter and matches a naive bf16 matmul.
#[test]
fn gemm_bf16_tc_runs_race_free() {
    use troupe_ptx_interp::{LaunchConfig, ParamValue, SimulatedGpu};
    let m = load("gemm_bf16_tc.ptx");
    assert!(m.kernel_names().iter().any(|k| k == "gemm_bf16_tc"));
    let (rows, cols, k) = (70usize, 72usize, 48usize);
    let mut s = 12345u32;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        half::bf16::from_f32((s % 2001) as f32 / 1000.0 - 1.0)
    };
    let a: Vec<half::bf16> = (0..rows * k).map(|_| rnd()).collect();
    let b: Vec<half::bf16> = (0..cols * k).map(|_| rnd()).collect();
    let mut dev = SimulatedGpu::new();
    let pa = dev.alloc(a.len() * 2).unwrap();
    dev.write_bf16(pa, &a).unwrap();
    let pb = dev.alloc(b.len() * 2).unwrap();
    dev.write_bf16(pb, &b).unwrap();
    let pc = dev.alloc(rows * cols * 4).unwrap();
    let mut cfg = LaunchConfig::new(
        (cols.div_ceil(64) as u32, rows.div_ceil(64) as u32, 1),
        (128, 1, 1),
    );
    cfg.race_check = true;
    let params = [
        ParamValue::Ptr(pc),
        ParamValue::Ptr(pa),
        ParamValue::Ptr(pb),
        ParamValue::U32(rows as u32),
        ParamValue::U32(cols as u32),
        ParamValue::U32(k as u32),
    ];
    dev.launch(&m, "gemm_bf16_tc", &cfg, &params)
        .unwrap_or_else(|e| panic!("{e}"));
    let c = dev.read_f32(pc, rows * cols).unwrap();
    for i in 0..rows {
        for j in 0..cols {
            let want: f64 = (0..k)
                .map(|kk| a[i * k + kk].to_f64() * b[j * k + kk].to_f64())
                .sum();
            assert!(
                (c[i * cols + j] as f64 - want).abs() < 1e-3,
                "C[{i}][{j}] = {} vs {want}",
                c[i * cols + j]
            );
        }
    }
}

/// Truncated and randomly mutated kernels must never panic the interpreter: parsing and
/// launching either succeed or return a typed error.
#[test]
fn mutated_kernels_never_panic() {
    use troupe_ptx_interp::{ast::Ty, LaunchConfig, ParamValue, SimulatedGpu};
    let files = kernel_files();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move |n: usize| -> usize {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n.max(1) as u64) as usize
    };
    let (mut parsed, mut launched) = (0, 0);
    for f in &files {
        let src = std::fs::read_to_string(f).expect("readable");
        let lines: Vec<&str> = src.lines().collect();
        for round in 0..24 {
            let mutated = match round % 4 {
                0 => src[..src.len() * (round % 97 + 1) / 98].to_string(),
                1 => {
                    let mut b = src.clone().into_bytes();
                    let digits: Vec<usize> = b
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.is_ascii_digit())
                        .map(|(i, _)| i)
                        .collect();
                    for _ in 0..3 {
                        let i = digits[rnd(digits.len())];
                        b[i] = b'0' + rnd(10) as u8;
                    }
                    String::from_utf8(b).expect("ascii")
                }
                2 => {
                    let drop = rnd(lines.len());
                    lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != drop)
                        .map(|(_, l)| *l)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                _ => {
                    let mut l = lines.clone();
                    let (a, b) = (rnd(l.len()), rnd(l.len()));
                    l.swap(a, b);
                    l.join("\n")
                }
            };
            let Ok(m) = Module::parse(&mutated) else {
                continue;
            };
            parsed += 1;
            for k in m.kernel_names() {
                let mut dev = SimulatedGpu::new();
                dev.set_instruction_limit(200_000);
                let params: Vec<ParamValue> = m
                    .kernel_params(&k)
                    .unwrap_or_default()
                    .iter()
                    .map(|(_, ty)| match ty {
                        Ty::U64 | Ty::B64 | Ty::S64 => {
                            ParamValue::Ptr(dev.alloc(4096).expect("alloc"))
                        }
                        Ty::F32 => ParamValue::F32(1.0),
                        _ => ParamValue::U32(7),
                    })
                    .collect();
                let mut cfg = LaunchConfig::new((2, 1, 1), (64, 1, 1));
                cfg.race_check = true;
                if dev.launch(&m, &k, &cfg, &params).is_ok() {
                    launched += 1;
                }
            }
        }
    }
    // Some mutants must get through the parser and launch, or the test checks nothing.
    assert!(parsed > 0, "no mutated kernel parsed");
    assert!(launched > 0, "no mutated kernel launched");
}
