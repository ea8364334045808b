//! Shared helpers of the integration tests: locating the bundled HF reference cases, reading
//! their `reference.safetensors`, running the `troupe` binary (plainly, or bounded in time and
//! address space) and classifying how a run ended.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Seek};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safetensors::tensor::{Dtype, SafeTensors};
use troupe::engine::graph::LoadedGraph;
use troupe::engine::model::Model;

pub const CASES: [&str; 5] = [
    "deepseek-v3-tiny",
    "deepseek-v3-tiny-bf16",
    "deepseek-v2-lite-tiny",
    "mixtral-tiny",
    "llama-tiny",
];

/// A file or folder of the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

/// The arrays of one case's `reference.safetensors`.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(case: &str) -> Reference {
        let dir = case_dir(case);
        let bytes =
            std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
        Reference { bytes }
    }
    /// (shape, values) of an F32 tensor.
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        (t.shape().to_vec(), f32_le(t.data()))
    }
    /// Values of an I64 tensor.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|x| x as u32).collect()
    }
}

pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Little-endian f32 values of a byte buffer.
pub fn f32_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Loads the model of a graph file or HF folder.
pub fn load_model(path: &Path) -> Model {
    let g = LoadedGraph::open(path).expect("open model");
    Model::load(&g, &mut |_, _| {}).expect("load model")
}

/// Runs the `troupe` binary: (exit code, stdout, stderr).
pub fn troupe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// How long and how much address space one bounded run may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    /// Bytes of address space (`ulimit -v`).
    pub address_space: u64,
}

/// The limits CI's fuzz cases run under.
pub const FUZZ_LIMITS: Limits = Limits {
    timeout: Duration::from_secs(5),
    address_space: 4 << 30,
};

/// A finished (or killed) bounded run.
#[derive(Debug)]
pub struct BoundedRun {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `program args` under `limits` (`ulimit -v`, then killed at the timeout), with `env` added
/// to the environment; stdin is empty.
pub fn run_bounded<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    env: &[(&str, &OsStr)],
    limits: Limits,
) -> BoundedRun {
    let mut out = tempfile::tempfile().expect("temp file");
    let mut err = tempfile::tempfile().expect("temp file");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -v "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg((limits.address_space / 1024).to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn sh");
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limits.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |f: &mut std::fs::File| {
        let mut v = Vec::new();
        let _ = f.rewind();
        let _ = f.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    };
    BoundedRun {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: read(&mut out),
        stderr: read(&mut err),
        elapsed: start.elapsed(),
    }
}

/// The outcome classes of a run; the first two keep the binary's promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 2 with exactly one stderr line.
    CleanError,
    /// Exit 2 with zero or several stderr lines.
    MultiLineError,
    /// A Rust panic (exit 101, or a panic message on a failed run).
    Panic,
    /// Killed by a signal (abort, segfault) other than for memory.
    Abort,
    /// An allocation failed under the address-space limit.
    OverMemory,
    /// Still running at the timeout (killed).
    Timeout,
    /// Any other exit code.
    OtherExit,
    /// An `EngineError::Internal` ("a bug in troupe") reached from input.
    InternalError,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::CleanError,
        Outcome::MultiLineError,
        Outcome::Panic,
        Outcome::Abort,
        Outcome::OverMemory,
        Outcome::Timeout,
        Outcome::OtherExit,
        Outcome::InternalError,
    ];
    pub fn keeps_promise(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::CleanError)
    }
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::CleanError => "exit-2 one line",
            Outcome::MultiLineError => "multi-line error",
            Outcome::Panic => "panic",
            Outcome::Abort => "abort",
            Outcome::OverMemory => "over-memory",
            Outcome::Timeout => "timeout",
            Outcome::OtherExit => "other exit code",
            Outcome::InternalError => "internal error",
        }
    }
}

/// How `EngineError::Internal` introduces itself.
pub const INTERNAL: &str = "internal error (a bug in troupe";

/// Classifies a bounded run of the binary.
pub fn classify(run: &BoundedRun) -> Outcome {
    let panicked = run.stderr.contains("panicked at");
    if run.timed_out {
        return Outcome::Timeout;
    }
    if run.signal.is_some() {
        return if run.stderr.contains("memory allocation of") {
            Outcome::OverMemory
        } else {
            Outcome::Abort
        };
    }
    match run.code {
        Some(0) => Outcome::Ok,
        Some(2) if panicked => Outcome::Panic,
        Some(2) if run.stderr.contains(INTERNAL) => Outcome::InternalError,
        Some(2) if run.stderr.trim_end().lines().count() == 1 => Outcome::CleanError,
        Some(2) => Outcome::MultiLineError,
        Some(101) => Outcome::Panic,
        _ => Outcome::OtherExit,
    }
}

/// The `troupe` binary under test.
pub fn troupe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_troupe"))
}
