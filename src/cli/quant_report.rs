//! `troupe quant-report -m MODEL [--quantize int8 --quantize-keep ...]`: how far a quantised
//! model is from the model as stored, teacher-forced. Both run one cache-free forward pass over
//! the same tokens (`--prompt-ids`, else `--tokens` ids drawn from `--seed`); at every position
//! it compares the next-token distributions: top-1 agreement, and the KL divergence
//! `KL(stored ‖ quantised)` in nats (mean, and the worst position). A report, not a pass mark:
//! random-weight models have tiny logit margins, so their top-1 flips easily.

use clap::Args;
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::weights::int8::QuantizePolicy;
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::Tensor;

use super::common::{check_memory, load_model, open_graph, parse_ids, quantize_policy, CliError};
use super::RunArgs;

#[derive(Args, Debug)]
pub struct QuantReportArgs {
    /// Model, threads and ISA as for every command. The policy is the graph file's [quantize]
    /// table, else int8 with attention kept; `--quantize int8 --quantize-keep LIST` replaces
    /// its kept classes.
    #[command(flatten)]
    pub run: RunArgs,
    /// Token ids, comma separated (default: --tokens ids drawn from --seed).
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// How many token ids to draw when --prompt-ids is not given.
    #[arg(long, default_value_t = 256)]
    pub tokens: usize,
    /// Seed of the drawn token ids.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the comparison found.
#[derive(Debug, serde::Serialize)]
struct Report {
    model: String,
    policy: QuantizePolicy,
    positions: usize,
    top1_agreement: f64,
    mean_kl_nats: f64,
    max_kl_nats: f64,
    /// Decode weight bytes of each form, as loaded (int8 with its scales).
    stored_weight_bytes: u64,
    quantised_weight_bytes: u64,
}

pub fn run(a: QuantReportArgs) -> Result<(), CliError> {
    if a.run.device != troupe_engine::DeviceId::Cpu {
        return Err(CliError::Usage(
            "quant-report runs on the CPU (--device cpu)".into(),
        ));
    }
    let mut graph = open_graph(&a.run)?;
    let policy = quantize_policy(&graph, a.run.quantize_keep.as_deref())?;
    let ids = match &a.prompt_ids {
        Some(s) => parse_ids(s)?,
        None => {
            let mut rng = SplitMix64::new(a.seed);
            let vocab = graph.spec.vocab_size as u64;
            (0..a.tokens)
                .map(|_| (rng.next_u64() % vocab) as u32)
                .collect()
        }
    };
    if ids.len() < 2 {
        return Err(CliError::Usage(
            "quant-report needs at least 2 tokens (--tokens or --prompt-ids)".into(),
        ));
    }
    check_memory(&a.run, &graph, 2, ids.len())?;
    super::common::init_threads(a.run.threads)?;
    let be = CpuBackend::new();
    graph.quantize = None;
    let stored = load_model(&graph)?;
    let want = ReferenceExecutor::new(&stored, &be).logits(&ids)?;
    let stored_bytes = super::bench::weight_bytes_per_token(&stored);
    drop(stored);
    graph.quantize = Some(policy.clone());
    let quantised = load_model(&graph)?;
    let got = ReferenceExecutor::new(&quantised, &be).logits(&ids)?;
    let report = compare(&want, &got, &policy, &graph.origin, ids.len())?;
    let report = Report {
        stored_weight_bytes: stored_bytes,
        quantised_weight_bytes: super::bench::weight_bytes_per_token(&quantised),
        ..report
    };
    if a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Runtime(format!("cannot write the report: {e}")))?;
        println!("{text}");
    } else {
        println!(
            "{}: int8 (kept: {}{}) vs as stored, {} positions teacher-forced\n\
             top-1 agreement {:.2}%   KL(stored || int8) mean {:.3e} nats, worst {:.3e}\n\
             decode weight bytes {:.1} MB -> {:.1} MB",
            report.model,
            if policy.keep.is_empty() {
                "nothing".to_string()
            } else {
                policy
                    .keep
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            match policy.keep_layers.is_empty() {
                true => String::new(),
                false => format!("; layers {:?}", policy.keep_layers),
            },
            report.positions,
            100.0 * report.top1_agreement,
            report.mean_kl_nats,
            report.max_kl_nats,
            report.stored_weight_bytes as f64 / 1e6,
            report.quantised_weight_bytes as f64 / 1e6,
        );
    }
    Ok(())
}

/// Top-1 agreement and KL over the rows of two `[T, V]` logit tensors.
fn compare(
    want: &Tensor,
    got: &Tensor,
    policy: &QuantizePolicy,
    origin: &std::path::Path,
    positions: usize,
) -> Result<Report, CliError> {
    let v = want.cols();
    if want.shape() != got.shape() || want.rows() != positions || v == 0 {
        return Err(CliError::Runtime(format!(
            "logits of shapes {:?} and {:?} for {positions} positions",
            want.shape(),
            got.shape()
        )));
    }
    let (mut agree, mut kl_sum, mut kl_max) = (0usize, 0.0f64, 0.0f64);
    for t in 0..positions {
        let (p, q) = (
            &want.data()[t * v..(t + 1) * v],
            &got.data()[t * v..(t + 1) * v],
        );
        agree += usize::from(argmax(p) == argmax(q));
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        let kl: f64 = lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>()
            .max(0.0);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
    }
    Ok(Report {
        model: origin.display().to_string(),
        policy: policy.clone(),
        positions,
        top1_agreement: agree as f64 / positions as f64,
        mean_kl_nats: kl_sum / positions as f64,
        max_kl_nats: kl_max,
        stored_weight_bytes: 0,
        quantised_weight_bytes: 0,
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// `log softmax(row)` in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&v| v as f64 - log_z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_agree_fully_with_zero_kl_and_a_shift_is_measured() {
        let a = Tensor::matrix(2, 3, vec![1.0, 2.0, 3.0, 0.5, 0.1, -1.0]).unwrap();
        let p = QuantizePolicy::int8();
        let o = std::path::Path::new("m");
        let r = compare(&a, &a, &p, o, 2).unwrap();
        assert_eq!((r.top1_agreement, r.mean_kl_nats), (1.0, 0.0));
        // Row 0 moves its top token; row 1 is unchanged.
        let b = Tensor::matrix(2, 3, vec![1.0, 3.0, 2.0, 0.5, 0.1, -1.0]).unwrap();
        let r = compare(&a, &b, &p, o, 2).unwrap();
        assert_eq!(r.top1_agreement, 0.5);
        // KL([1,2,3] || [1,3,2]) = (p3 - p2)·1 with p = softmax([1,2,3]).
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let z: f64 = e.iter().sum();
        let want = (e[2] - e[1]) / z;
        assert!(
            (r.max_kl_nats - want).abs() < 1e-12,
            "{} vs {want}",
            r.max_kl_nats
        );
        assert!((r.mean_kl_nats - want / 2.0).abs() < 1e-12);
    }
}
