//! Failures of a deployment over several processes: a rank count that does not match the
//! placement (one line from rank 0, exit 2), a rank killed with SIGKILL in the middle of
//! generation (the whole job ends within 5 s, non-zero, naming the lost rank, no process left),
//! and a rank that cannot load its weights (every rank ends, with that rank's error; nobody
//! hangs in a collective).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{case_dir, troupe_bin};
use crate::mpi::{
    error_lines, finish, generate_args, mpirun, mpirun_command, placement_toml, scattered_groups,
    scratch, write, PROMPTS,
};

#[test]
fn a_rank_count_that_does_not_match_the_placement_is_one_line_from_rank_0() {
    let dir = scratch("mismatch");
    let model = case_dir("deepseek-v3-tiny");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let pl = write(
        &dir,
        "p.toml",
        &placement_toml(2, 1, &scattered_groups(16, 2), "sequential", false),
    );
    let r = mpirun(3, &generate_args(&model, &prompts, &["--placement", &pl]));
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let ours = error_lines(&r.stderr);
    assert_eq!(ours.len(), 1, "{}", r.stderr);
    assert!(ours[0].contains("2 node(s) but 3 ranks"), "{}", ours[0]);
    assert_eq!(r.stdout, "");
}

/// Pids of the `troupe` processes `mpirun` (pid `parent`) started, with their ranks.
fn ranks_of(parent: u32) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid != parent || !stat.contains("(troupe)") {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(rank) = rank {
            out.push((pid, rank));
        }
    }
    out
}

/// `troupe_forward_passes_total` from the Prometheus endpoint at `addr` (0 when unreachable).
fn forward_passes(addr: &str) -> u64 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find(|l| l.starts_with("troupe_forward_passes_total"))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has ended; only its parent has not reaped it yet.
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn killing_any_rank_during_generation_ends_the_job_within_5_s() {
    let dir = scratch("kill");
    let model = case_dir("deepseek-v3-tiny");
    // Long enough to be killed in the middle: 24 requests of 200 new tokens.
    let many: String = (0..24)
        .map(|i| format!("{{\"prompt_ids\": [0, {}, 9]}}\n", 10 + i))
        .collect();
    let prompts = write(&dir, "many.jsonl", &many);
    for victim in [1usize, 0] {
        // A port free right now (fixed numbers sat in the ephemeral range, where the serving
        // tests' and mpirun's own connections could hold them).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let pl = write(
            &dir,
            "p.toml",
            &placement_toml(2, 1, &scattered_groups(16, 2), "two-microbatch", false),
        );
        let addr = format!("127.0.0.1:{port}");
        let mut args = generate_args(
            &model,
            &prompts,
            &["--placement", &pl, "--metrics-addr", &addr],
        );
        let n = args.iter().position(|a| a == "-n").unwrap();
        args[n + 1] = "200".into();
        let start = Instant::now();
        let mut child = mpirun_command(2)
            .arg(troupe_bin())
            .args(&args)
            .spawn()
            .unwrap();
        let pids = loop {
            let p = ranks_of(child.id());
            if p.len() == 2 && forward_passes(&addr) >= 3 {
                break p;
            }
            if child.try_wait().unwrap().is_some() {
                let r = finish(child, Duration::from_secs(1), Instant::now());
                panic!("the job ended before the kill: {:?}\n{}", r.code, r.stderr);
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "generation never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let (pid, _) = pids.iter().copied().find(|&(_, r)| r == victim).unwrap();
        let killed = Instant::now();
        // SAFETY: a plain kill(2) of a process this test started (through mpirun).
        unsafe { libc_kill(pid as i32, 9) };
        let r = finish(child, Duration::from_secs(60), start);
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "killing rank {victim}: the job took {took:?} to end"
        );
        assert_ne!(r.code, Some(0), "killing rank {victim}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("rank {victim}")),
            "killing rank {victim}: stderr names no lost rank: {}",
            r.stderr
        );
        for (p, rank) in pids {
            assert!(!alive(p), "rank {rank} (pid {p}) outlived the job");
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A copy of `case` whose weights file is cut short.
fn broken_copy(case: &str, dir: &Path) -> std::path::PathBuf {
    let src = case_dir(case);
    let dst = dir.join(format!("{case}-broken"));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let w = dst.join("model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&w)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    dst
}

#[test]
fn a_rank_that_cannot_load_its_weights_ends_every_rank() {
    let dir = scratch("badload");
    let good = case_dir("deepseek-v3-tiny");
    let bad = broken_copy("deepseek-v3-tiny", &dir);
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let pl = write(
        &dir,
        "p.toml",
        &placement_toml(2, 1, &scattered_groups(16, 2), "sequential", false),
    );
    // MPMD: rank 0 has the good checkpoint, rank 1 the broken one.
    let start = Instant::now();
    let mut c = mpirun_command(1);
    c.arg(troupe_bin())
        .args(generate_args(&good, &prompts, &["--placement", &pl]));
    c.args([":", "-n", "1"])
        .arg(troupe_bin())
        .args(generate_args(&bad, &prompts, &["--placement", &pl]));
    let r = finish(c.spawn().unwrap(), Duration::from_secs(60), start);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let ours = error_lines(&r.stderr);
    assert!(
        !ours.is_empty()
            && ours
                .iter()
                .all(|l| l.contains("rank 1:") && l.contains("model.safetensors")),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
}
