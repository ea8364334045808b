"""Train troupe's bundled language model, `tests/fixtures/fortune-tiny`: a ~10M-parameter
DeepSeek-V3-architecture model (MLA with q-LoRA, sigmoid-routed experts with `noaux_tc`
group-limited routing and a shared expert, one dense first layer, and one multi-token-prediction
(MTP) module) trained with Hugging Face `transformers` + `torch` on CPU on the English and Chinese
fortune cookies that Debian ships.

Never run by CI (it takes about an hour on 2 cores). Usage, from the repository root:

    apt-get install -y fortunes fortunes-min fortunes-zh        # the corpus (Debian packages)
    python3 tests/tools/train_tiny.py [--out tests/fixtures/fortune-tiny] [--steps 1200]
                                      [--venv target/train-tiny-venv] [--smoke]

The script makes its own virtualenv (pinned versions from PyPI, see PINS) on first use and
re-runs itself inside it. `--smoke` trains a few steps and writes everything to a scratch folder,
to check the export end to end in a minute.

What it writes into --out: config.json, generation_config.json, model.safetensors (bf16, the MTP
module under `model.layers.{num_hidden_layers}.*` as DeepSeek stores it), tokenizer.json,
tokenizer_config.json (with a chat template), reference.json + reference.safetensors (made by
transformers, in the format of the other fixtures, see tests/fixtures/README.md), train_log.json
and loss.png (training and held-out loss against the step).

Reproducibility: the data split, the tokenizer, the initialisation, the batch order and the
training are seeded; torch runs with `use_deterministic_algorithms(True)` and a fixed thread
count, so two runs on the same machine give the same weights. Across machines the bits may differ:
torch's CPU kernels (oneDNN/MKL) choose blocking and vector paths by CPU model, so reduction
orders differ between CPUs, and different torch/transformers versions differ too.

The training and export halves live in train_tiny.py (data, tokenizer, model, training loop) and
train_tiny_export.py (checkpoint, MTP weights, transformers reference, plot).
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time

SEED = 15
PINS = ["torch==2.15.0", "transformers==5.23.0", "tokenizers==0.23.3", "safetensors==0.8.0",
        "numpy==2.4.6", "matplotlib==3.11.2"]
FORTUNES = "/usr/share/games/fortunes"
CHINESE_FILES = ("chinese", "tang300", "song100")  # the fortunes-zh package
SKIPPED_FILES = ("ascii-art",)  # pictures made of characters, not language
THREADS = 1  # one thread: deterministic, and far faster than 2 on a shared 2-core machine
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "fortune-tiny"))
    p.add_argument("--venv", default=os.path.join(REPO, "target", "train-tiny-venv"))
    p.add_argument("--work", default=os.path.join(REPO, "target", "fortune-tiny-train"),
                   help="where the trained checkpoint (not committed) is kept between the phases")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mtp-weight", type=float, default=0.3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="a few steps into a scratch folder")
    p.add_argument("--export-only", action="store_true",
                   help="skip training; export the checkpoint an earlier run left in --work")
    return p.parse_args()


def ensure_venv(venv):
    """Re-runs this script inside `venv` (made and filled with PINS when missing)."""
    if os.path.abspath(sys.prefix) == os.path.abspath(venv):
        return
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "pins.txt")
    if not os.path.exists(stamp) or open(stamp).read() != "\n".join(PINS):
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", *PINS])
        with open(stamp, "w") as f:
            f.write("\n".join(PINS))
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------
# Data

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_fortunes():
    """{file name: [fortune text]} from Debian's fortune files, `%` separators and ANSI colour
    codes removed, trailing blanks of each line stripped."""
    if not os.path.isdir(FORTUNES):
        sys.exit(f"{FORTUNES} is missing: apt-get install -y fortunes fortunes-min fortunes-zh")
    out = {}
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if "." in name or os.path.islink(path) or name in SKIPPED_FILES:
            continue
        text = ANSI.sub("", open(path, encoding="utf-8", errors="replace").read())
        docs = []
        for chunk in re.split(r"^%[ \t]*$", text, flags=re.M):
            lines = [line.rstrip() for line in chunk.strip("\n").split("\n")]
            doc = "\n".join(lines).strip("\n")
            if doc.strip():
                docs.append(doc)
        out[name] = docs
    missing = [f for f in CHINESE_FILES if f not in out]
    if missing or "fortunes" not in out:
        sys.exit(f"fortune files {missing or ['fortunes']} missing: "
                 "apt-get install -y fortunes fortunes-min fortunes-zh")
    return out


def split(corpus, held_out_fraction=0.02):
    """A seeded split by fortune: from every file, a held-out share (at least one fortune)."""
    rng = random.Random(SEED)
    train, held = [], []
    for name in sorted(corpus):
        docs = list(corpus[name])
        rng.shuffle(docs)
        k = max(1, round(len(docs) * held_out_fraction))
        held += docs[:k]
        train += docs[k:]
    return train, held


def train_tokenizer(texts, vocab_size):
    """Byte-level BPE (GPT-2-style pre-tokenizer) with <|bos|>=0, <|eos|>=1, <|pad|>=2; no
    post-processor, so encoding adds no BOS (the caller does), as in the other fixtures."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def pack(docs, tok, seq, rng):
    """One token stream (<|bos|> doc <|eos|> ...), documents in `rng`'s order, cut into rows of
    seq + 1 tokens (inputs and the shifted targets)."""
    import torch
    order = list(range(len(docs)))
    rng.shuffle(order)
    stream = []
    for i in order:
        stream += [0] + tok.encode(docs[i]).ids + [1]
    rows = len(stream) // (seq + 1)
    return torch.tensor(stream[: rows * (seq + 1)], dtype=torch.long).view(rows, seq + 1)


# ---------------------------------------------------------------------------------------------
# Model

def model_config(vocab_size):
    import transformers as tf
    # Sizes troupe loads (engine/src/graph/hf_config.rs): DeepSeek-V3 with sigmoid + noaux_tc.
    return tf.DeepseekV3Config(
        vocab_size=vocab_size, hidden_size=192, intermediate_size=512, moe_intermediate_size=96,
        num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=96, kv_lora_rank=64,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, max_position_embeddings=256,
        rope_interleave=True, rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.02,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=2.0,
                             original_max_position_embeddings=128, beta_fast=32, beta_slow=1,
                             mscale=1.0, mscale_all_dim=1.0),
        bos_token_id=0, eos_token_id=1, pad_token_id=2, num_nextn_predict_layers=1)


def build(config):
    """The main model and its MTP module (transformers' own `MtpModel`, which shares the
    embedding and the output head with the main model), initialised from SEED."""
    import torch
    import transformers as tf
    from transformers.modeling_layers import MtpModel
    torch.manual_seed(SEED)
    config._attn_implementation = "sdpa"
    config._experts_implementation = "eager"
    model = tf.DeepseekV3ForCausalLM(config)
    mtp = MtpModel(model, 1)
    mtp.tie_with_main_model(model)
    # MtpModel's generic initialiser leaves the block's router and experts at zero.
    with torch.no_grad():
        for name, p in mtp.layers.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj", "gate.weight")):
                p.normal_(0.0, config.initializer_range)
    return model, mtp


def routers(*modules):
    """Every DeepSeek-V3 router (the main model's MoE layers, then the MTP block's)."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    return [m for mod in modules for m in mod.modules() if isinstance(m, DeepseekV3TopkRouter)]


def losses(model, mtp, rows):
    """(main next-token loss, MTP next-next-token loss, MTP correct, MTP count) on `rows`.

    The MTP module sees, at position t, the main model's final (normed) hidden state at t and the
    embedding of token t+1 (transformers' MtpModel convention, as DeepSeek-V3's paper and vLLM),
    and predicts token t+2."""
    import torch.nn.functional as F
    ids, targets = rows[:, :-1], rows[:, 1:]
    out = model.model(input_ids=ids)
    h = out.last_hidden_state
    logits = model.lm_head(h)
    main = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    pos = torch_arange(ids.shape[1], ids.device)[None].expand(ids.shape[0], -1)
    mh = mtp.forward_layer(0, h[:, :-1], pos[:, 1:], None, input_ids=ids[:, 1:])
    mlogits = mtp._project_to_logits(mh)[:, :-1]
    mtarget = ids[:, 2:]
    mtp_loss = F.cross_entropy(mlogits.flatten(0, 1).float(), mtarget.flatten())
    correct = int((mlogits.argmax(-1) == mtarget).sum())
    return main, mtp_loss, correct, mtarget.numel()


def torch_arange(n, device):
    import torch
    return torch.arange(n, device=device)


def evaluate(model, mtp, rows, batch):
    import torch
    model.eval()
    mtp.eval()
    tot = [0.0, 0.0, 0, 0]
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch):
            m, t, c, n = losses(model, mtp, rows[i:i + batch])
            k = rows[i:i + batch].shape[0]
            tot[0] += float(m) * k
            tot[1] += float(t) * k
            tot[2] += c
            tot[3] += n
    model.train()
    mtp.train()
    return tot[0] / rows.shape[0], tot[1] / rows.shape[0], tot[2] / tot[3]


def train(args, model, mtp, train_docs, held_rows, tok):
    """AdamW with warmup and cosine decay, main loss + mtp_weight * MTP loss, gradient clipping;
    after every step each router's `e_score_correction_bias` moves by ±gamma toward balanced
    expert load (DeepSeek-V3's auxiliary-loss-free balancing), for the first 90% of the steps."""
    import torch
    params = {id(p): p for p in list(model.parameters()) + list(mtp.parameters())}
    params = list(params.values())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, min(50, args.steps // 10))

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    rs = routers(model, mtp)
    loads = [torch.zeros(r.num_experts) for r in rs]
    def count(i):
        def hook(mod, inp, out):
            loads[i].add_(torch.bincount(out[2].flatten(), minlength=mod.num_experts).float())
        return hook

    hooks = [r.register_forward_hook(count(i)) for i, r in enumerate(rs)]
    gamma = 1e-3
    rng = random.Random(SEED + 1)
    rows, cursor, epoch = pack(train_docs, tok, args.seq, rng), 0, 0
    log = {"step": [], "train_loss": [], "train_mtp_loss": [], "eval_step": [], "eval_loss": [],
           "eval_mtp_loss": [], "eval_mtp_accuracy": []}
    t0 = time.time()
    model.train()
    mtp.train()
    for step in range(args.steps):
        if cursor + args.batch > rows.shape[0]:
            rows, cursor, epoch = pack(train_docs, tok, args.seq, rng), 0, epoch + 1
        batch = rows[cursor:cursor + args.batch]
        cursor += args.batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        for l in loads:
            l.zero_()
        main, mtp_loss, _, _ = losses(model, mtp, batch)
        loss = main + args.mtp_weight * mtp_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step < 0.9 * args.steps:
            with torch.no_grad():
                for r, l in zip(rs, loads):
                    r.e_score_correction_bias.add_(gamma * torch.sign(l.mean() - l))
        log["step"].append(step + 1)
        log["train_loss"].append(float(main))
        log["train_mtp_loss"].append(float(mtp_loss))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            e, em, acc = evaluate(model, mtp, held_rows, args.batch)
            log["eval_step"].append(step + 1)
            log["eval_loss"].append(e)
            log["eval_mtp_loss"].append(em)
            log["eval_mtp_accuracy"].append(acc)
            print(f"step {step + 1}/{args.steps} epoch {epoch} lr {lr_at(step):.2e} "
                  f"train {float(main):.3f} mtp {float(mtp_loss):.3f} | held-out {e:.3f} "
                  f"mtp {em:.3f} mtp-acc {acc:.3f} | {time.time() - t0:.0f}s", flush=True)
    for h in hooks:
        h.remove()
    log["epochs"] = epoch + cursor / rows.shape[0]
    log["train_seconds"] = time.time() - t0
    return log


def main():
    args = parse_args()
    ensure_venv(args.venv)
    import torch
    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    if args.smoke:
        args.out = os.path.join(REPO, "target", "fortune-tiny-smoke")
        args.work = os.path.join(REPO, "target", "fortune-tiny-smoke-train")
        args.steps, args.eval_every = 4, 2
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    ckpt = os.path.join(args.work, "checkpoint.pt")
    if not args.export_only:
        run_training(args, ckpt)
    import train_tiny_export as export
    export.export_all(args, ckpt)


def run_training(args, ckpt):
    """Data, tokenizer, model and training; leaves everything the export needs in `ckpt`."""
    import torch
    t_start = time.time()
    corpus = read_fortunes()
    train_docs, held_docs = split(corpus)
    tok = train_tokenizer(train_docs, 4096)
    held_rows = pack(held_docs, tok, args.seq, random.Random(SEED + 2))[: (8 if args.smoke else 48)]
    n_train_tokens = sum(len(tok.encode(d).ids) + 2 for d in train_docs)
    n_held_tokens = sum(len(tok.encode(d).ids) + 2 for d in held_docs)
    zh = sum(len(corpus[f]) for f in CHINESE_FILES)
    data = {"source": "Debian packages fortunes, fortunes-min (English) and fortunes-zh (Chinese), "
                      f"{FORTUNES}",
            "files": {f: len(d) for f, d in corpus.items()},
            "fortunes": {"english": sum(len(d) for d in corpus.values()) - zh, "chinese": zh},
            "bytes": sum(len(x.encode()) for d in corpus.values() for x in d),
            "train_fortunes": len(train_docs), "held_out_fortunes": len(held_docs),
            "train_tokens": n_train_tokens, "held_out_tokens": n_held_tokens,
            "held_out_tokens_evaluated": held_rows.numel() - held_rows.shape[0]}
    print(json.dumps(data), flush=True)

    config = model_config(tok.get_vocab_size())
    model, mtp = build(config)
    n_main = sum(p.numel() for p in model.parameters())
    n_mtp = sum(p.numel() for n, p in mtp.named_parameters()
                if not n.startswith(("embed_tokens", "shared_head")))
    print(f"parameters: main {n_main}, mtp {n_mtp}", flush=True)
    log = train(args, model, mtp, train_docs, held_rows, tok)
    meta = {"data": data, "seed": SEED, "threads": THREADS, "pins": PINS,
            "parameters": {"main": n_main, "mtp_module": n_mtp, "total": n_main + n_mtp},
            "steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr,
            "mtp_loss_weight": args.mtp_weight,
            "tokens_seen": args.steps * args.batch * args.seq,
            "train_seconds": log["train_seconds"]}
    tok.save(os.path.join(args.work, "tokenizer.json"))
    torch.save({"model": model.state_dict(), "mtp": mtp.layers.state_dict(), "log": log,
                "meta": meta, "held_docs": held_docs, "held_rows": held_rows,
                "phase_seconds": time.time() - t_start}, ckpt)
    print(f"checkpoint: {ckpt}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
