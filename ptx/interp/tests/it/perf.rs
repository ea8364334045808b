//! Throughput of the interpreter (thread-instructions per second) on an ALU loop and
//! on a memory-bound element-wise kernel. Prints the numbers (`--nocapture`) and
//! asserts only a generous floor so a loaded CI machine does not flake.

use std::time::Instant;

use crate::helpers::kernel_source;
use troupe_ptx_interp::*;

fn report(name: &str, instructions: u64, secs: f64) -> f64 {
    let rate = instructions as f64 / secs;
    println!(
        "interp throughput [{name}]: {instructions} thread-instructions in {secs:.3} s = {:.1} M/s",
        rate / 1e6
    );
    rate
}

#[test]
fn alu_loop_and_elementwise_throughput() {
    let alu = Module::parse(
        ".version 8.0\n.target sm_80\n.address_size 64\n\
         .visible .entry k(.param .u64 out, .param .u32 iters)\n{\n.reg .pred %p<2>;\n.reg .b32 %r<8>;\n.reg .f32 %f<4>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [out];\nld.param.u32 %r2, [iters];\nmov.u32 %r1, %tid.x;\ncvt.rn.f32.u32 %f1, %r1;\nmov.f32 %f2, 0f3F800000;\nmov.u32 %r3, 0;\n\
         LOOP:\nfma.rn.f32 %f2, %f2, 0f3F7FFFFF, %f1;\nadd.u32 %r3, %r3, 1;\nxor.b32 %r4, %r3, %r1;\nsetp.lt.u32 %p1, %r3, %r2;\n@%p1 bra LOOP;\n\
         mul.wide.u32 %rd2, %r1, 4;\nadd.u64 %rd2, %rd1, %rd2;\nst.global.f32 [%rd2], %f2;\nret;\n}\n",
    )
    .unwrap();
    let mut dev = SimulatedGpu::new();
    let out = dev.alloc(256 * 4).unwrap();
    let t = Instant::now();
    let s = dev
        .launch(
            &alu,
            "k",
            &LaunchConfig::linear(8, 256),
            &[ParamValue::Ptr(out), ParamValue::U32(1000)],
        )
        .unwrap();
    let alu_rate = report("alu loop", s.instructions, t.elapsed().as_secs_f64());

    let silu = Module::parse(&kernel_source("silu_mul.ptx")).unwrap();
    let n = 1 << 18;
    let g = dev.alloc_f32(&vec![0.5; n]).unwrap();
    let u = dev.alloc_f32(&vec![2.0; n]).unwrap();
    let o = dev.alloc(n * 4).unwrap();
    let t = Instant::now();
    let s = dev
        .launch(
            &silu,
            "silu_mul_f32",
            &LaunchConfig::linear((n / 256) as u32, 256),
            &[
                ParamValue::Ptr(o),
                ParamValue::Ptr(g),
                ParamValue::Ptr(u),
                ParamValue::U32(n as u32),
            ],
        )
        .unwrap();
    let mem_rate = report("silu_mul", s.instructions, t.elapsed().as_secs_f64());
    assert!(
        alu_rate > 2e6 && mem_rate > 2e6,
        "interpreter is far slower than expected"
    );
}
