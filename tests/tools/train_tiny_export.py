"""Export half of train_tiny.py: turns the trained checkpoint into the fixture folder.

- model.safetensors: the main model as transformers saves it (bf16, per-expert tensor names,
  `e_score_correction_bias` kept F32), plus the MTP module as DeepSeek-V3 checkpoints store it:
  `model.layers.{L}.{enorm,hnorm,eh_proj}.weight`, the block's own weights under
  `model.layers.{L}.` (self_attn.*, mlp.*, the two layer norms) and `model.layers.{L}.shared_head.
  norm.weight`, with L = num_hidden_layers. The embedding and the output head are shared with the
  main model, so the copies real checkpoints carry (`embed_tokens`, `shared_head.head`) are left
  out. transformers' forward never reads these tensors.
- reference.json + reference.safetensors: transformers' outputs (eager attention, eager experts)
  on the reloaded files, in the format of tests/fixtures/deepseek-v3-tiny-bf16: the bf16
  computation, and the same bf16 weights upcast and computed in fp32 (`*_f32compute`), which is
  what troupe computes and is tested against.
- train_log.json (data, parameters, steps, times, losses, MTP accuracy, samples) and loss.png.
"""
import copy
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time

import torch

import train_tiny as T

N_NEW = 16  # greedy tokens per reference prompt, as in the other fixtures
# Three prompt slots (short English, longer English, the longest = the hidden-state prompt,
# Chinese); in each slot the first candidate whose greedy and routing margins are decisive is used.
PROMPT_SLOTS = [
    ["Life is", "A fool", "Love is", "The world"],
    ["A computer scientist is someone who fixes things that", "Never trust a man who",
     "The best way to predict the future is", "If you can't be good, be"],
    ["《静夜思》\n作者：李白\n床前明月光，疑是地上霜。", "在 Debian 这种规模的项目中，很难避免",
     "学而时习之，不亦说乎？有朋自远方来，", "《春晓》\n作者：孟浩然\n春眠不觉晓，"],
]
SAMPLE_PROMPTS = ["Life is", "A programmer is", "Q: How many", "《静夜思》\n作者：李白\n", "人生"]
MIN_REL_MARGIN = 2e-4   # greedy top1-top2 gap over |top1| (fp32 noise is ~4e-6)
MIN_ROUTE_MARGIN = 1e-4  # router score gaps (fp32 noise on them is ~1e-6)
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
                 "{% if not loop.last %}\n{% endif %}{% endfor %}")


def restore(args, ckpt):
    """(model, mtp, tok, saved) from the training checkpoint, in f32."""
    from tokenizers import Tokenizer
    saved = torch.load(ckpt, weights_only=False)
    tok = Tokenizer.from_file(os.path.join(args.work, "tokenizer.json"))
    model, mtp = T.build(T.model_config(tok.get_vocab_size()))
    model.load_state_dict(saved["model"])
    mtp.layers.load_state_dict(saved["mtp"])
    mtp.tie_with_main_model(model)
    return model.eval(), mtp.eval(), tok, saved


def to_bf16_keep_bias(module):
    """bf16 weights; the routers' `e_score_correction_bias` stays F32 as transformers keeps it."""
    biases = {n: b.detach().clone() for n, b in module.named_buffers()
              if n.endswith("e_score_correction_bias")}
    module.to(torch.bfloat16)
    for n, b in biases.items():
        owner = module.get_submodule(n.rsplit(".", 1)[0])
        owner.e_score_correction_bias = b.float()
    return module


def mtp_tensors(model, mtp):
    """The MTP module's tensors under DeepSeek-V3's names (`model.layers.{L}.*`). The block's
    per-expert names come from transformers' own save of a model one layer deeper."""
    import transformers as tf
    from safetensors.torch import load_file
    cfg = model.config
    L = cfg.num_hidden_layers
    deeper = tf.DeepseekV3Config.from_dict(cfg.to_dict())
    deeper.num_hidden_layers = L + 1
    deeper.num_nextn_predict_layers = 0
    tmp_model = tf.DeepseekV3ForCausalLM(deeper)
    layer = mtp.layers[0]
    tmp_model.model.layers[L].load_state_dict(layer.mtp_block.state_dict())
    to_bf16_keep_bias(tmp_model)
    with tempfile.TemporaryDirectory() as d:
        tmp_model.save_pretrained(d, safe_serialization=True)
        saved = load_file(os.path.join(d, "model.safetensors"))
    prefix = f"model.layers.{L}."
    out = {k: v for k, v in saved.items() if k.startswith(prefix)}
    for ours, theirs in [("enorm", layer.enorm), ("hnorm", layer.hnorm), ("eh_proj", layer.eh_proj),
                         ("shared_head.norm", layer.post_norm)]:
        out[f"{prefix}{ours}.weight"] = theirs.weight.detach().to(torch.bfloat16).contiguous()
    return out


def write_checkpoint(args, model, mtp, tok):
    """config.json, generation_config.json, model.safetensors, tokenizer files into args.out."""
    import transformers as tf
    from safetensors.torch import load_file, save_file
    out = args.out
    main = to_bf16_keep_bias(copy.deepcopy(model))
    main.config.dtype = torch.bfloat16
    main.save_pretrained(out, safe_serialization=True)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    tensors.update(mtp_tensors(model, mtp))
    save_file(dict(sorted(tensors.items())), os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    rope = dict(cfg["rope_parameters"])
    cfg.update({"scoring_func": "sigmoid", "topk_method": "noaux_tc", "num_nextn_predict_layers": 1,
                "rope_theta": rope.pop("rope_theta"),
                "rope_scaling": dict(rope, type=rope["rope_type"])})
    cfg.pop("num_mtp_layers", None)
    json.dump(dict(sorted(cfg.items())), open(path, "w"), indent=2)
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>",
                                      eos_token="<|eos|>", pad_token="<|pad|>")
    fast.save_pretrained(out)
    # The chat template goes into tokenizer_config.json (transformers reads it there too).
    path = os.path.join(out, "tokenizer_config.json")
    tcfg = json.load(open(path))
    tcfg["chat_template"] = CHAT_TEMPLATE
    json.dump(tcfg, open(path, "w"), indent=2)
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    shutil.copy(os.path.join(args.work, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    chat = tf.AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "Life is"}], tokenize=False)
    assert chat == "<|bos|>Life is", chat


def reload(out, dtype):
    """The fixture as transformers loads it (eager attention and experts)."""
    import transformers as tf
    L = json.load(open(os.path.join(out, "config.json")))["num_hidden_layers"]
    # Silence (and let MtpModel find) the MTP keys of this depth, as transformers does for V3's 61.
    tf.DeepseekV3ForCausalLM._keys_to_ignore_on_load_unexpected = [
        r"model\.layers\.61.*", rf"model\.layers\.{L}\..*"]
    return tf.DeepseekV3ForCausalLM.from_pretrained(
        out, dtype=dtype, attn_implementation="eager", experts_implementation="eager").eval()


class Recorder:
    """Forward hooks: the residual stream, the final norm's output and each router's outputs."""

    def __init__(self, model):
        self.residual, self.routers, self.hooks = [], {}, []
        m = model.model
        self.hooks.append(m.embed_tokens.register_forward_hook(self._res))
        for i, layer in enumerate(m.layers):
            self.hooks.append(layer.register_forward_hook(self._res))
            if hasattr(layer.mlp, "gate"):
                self.hooks.append(layer.mlp.gate.register_forward_hook(self._router(i)))
        self.hooks.append(m.norm.register_forward_hook(self._norm))
        self.gates = {i: l.mlp.gate for i, l in enumerate(m.layers) if hasattr(l.mlp, "gate")}

    def _res(self, mod, inp, out):
        self.residual.append((out[0] if isinstance(out, tuple) else out)[0].float())

    def _norm(self, mod, inp, out):
        self.final = out[0].float()

    def _router(self, i):
        def hook(mod, inp, out):
            self.routers[i] = tuple(x.detach() for x in out)
        return hook

    def clear(self):
        self.residual, self.routers = [], {}

    def remove(self):
        for h in self.hooks:
            h.remove()


def routing_margins(rec):
    """Smallest gaps the router compared on the recorded pass (V3 units: sigmoid + bias), and
    whether every chosen expert had a positive biased score (where troupe, which drops the other
    groups with -inf like DeepSeek, and transformers must agree)."""
    group_min, expert_min, positive = float("inf"), float("inf"), True
    for i, (logits, _, idx) in rec.routers.items():
        g = rec.gates[i]
        s = logits.float().sigmoid() + g.e_score_correction_bias.float()
        per = g.num_experts // g.num_group
        grp = s.view(-1, g.num_group, per).topk(2, dim=-1)[0].sum(-1).sort(-1, descending=True)[0]
        group_min = min(group_min, float((grp[:, g.topk_group - 1] - grp[:, g.topk_group]).min()))
        keep = s.view(-1, g.num_group, per).topk(2, dim=-1)[0].sum(-1).topk(g.topk_group, -1)[1]
        mask = torch.zeros(s.shape[0], g.num_group, dtype=torch.bool)
        mask.scatter_(1, keep, True)
        kept = s.masked_fill(~mask.repeat_interleave(per, 1), float("-inf")).sort(-1, True)[0]
        expert_min = min(expert_min, float((kept[:, g.top_k - 1] - kept[:, g.top_k]).min()))
        positive &= bool((s.gather(1, idx) > 0).all())
    return group_min, expert_min, positive


def greedy(model, ids):
    """Greedy tokens with EOS disabled, and the raw logits `generate` chose them from."""
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(ids[None], do_sample=False, max_new_tokens=N_NEW, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=2)
    gen = out.sequences[0, ids.shape[0]:]
    steps = torch.stack([s[0].float() for s in out.logits])
    assert gen.shape[0] == N_NEW and bool((steps.argmax(-1) == gen).all())
    top2 = steps.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    return gen, steps, float(gap.min()), float((gap / top2[:, 0].abs()).min()), \
        float((gap / steps.std(-1)).min())


def study(model, ids, rec):
    """Logits, greedy tokens and margins of one prompt, and the routing margins over the prompt
    and its continuation (one cache-free pass, which also checks teacher forcing)."""
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float()
    gen, steps, gap, rel, over_std = greedy(model, ids)
    rec.clear()
    with torch.no_grad():
        full = model(torch.cat([ids, gen])[None]).logits[0].float()
    tf_match = bool((full[ids.shape[0] - 1:-1].argmax(-1) == gen).all())
    gm, em, positive = routing_margins(rec)
    return dict(logits=logits, gen=gen, steps=steps, gap=gap, rel=rel, over_std=over_std,
                tf_match=tf_match, group_margin=gm, expert_margin=em, positive=positive)


def pick_prompts(f32, tok):
    rec = Recorder(f32)
    chosen, attempts = [], []
    for slot in PROMPT_SLOTS:
        best = None
        for text in slot:
            ids = torch.tensor([0] + tok.encode(text).ids)
            r = study(f32, ids, rec)
            ok = (r["rel"] >= MIN_REL_MARGIN and min(r["group_margin"], r["expert_margin"])
                  >= MIN_ROUTE_MARGIN and r["tf_match"] and r["positive"])
            attempts.append({"text": text, "min_margin_over_abs_top1": r["rel"],
                             "group_margin_min": r["group_margin"],
                             "expert_margin_min": r["expert_margin"], "accepted": ok})
            score = min(r["rel"] / MIN_REL_MARGIN,
                        min(r["group_margin"], r["expert_margin"]) / MIN_ROUTE_MARGIN)
            if best is None or score > best[0]:
                best = (score, text, ids)
            if ok:
                break
        chosen.append((best[1], best[2]))
    rec.remove()
    return chosen, attempts


def reference(out, tok):
    """reference.json + reference.safetensors, as in tests/fixtures/deepseek-v3-tiny-bf16."""
    from safetensors.torch import save_file
    bf16, f32 = reload(out, torch.bfloat16), reload(out, torch.float32)
    prompts, attempts = pick_prompts(f32, tok)
    hidden = max(range(len(prompts)), key=lambda i: prompts[i][1].shape[0])
    tensors, gens, gens32, stats, prefix, rel32 = {}, [], [], [], [], []
    rec16, rec32 = Recorder(bf16), Recorder(f32)
    for p, (text, ids) in enumerate(prompts):
        a, b = study(bf16, ids, rec16), study(f32, ids, rec32)
        tensors[f"prompt.{p}.input_ids"] = ids
        for suffix, r in (("", a), ("_f32compute", b)):
            tensors[f"prompt.{p}.logits{suffix}"] = r["logits"]
            tensors[f"prompt.{p}.generated_ids{suffix}"] = r["gen"]
            tensors[f"prompt.{p}.step_logits{suffix}"] = r["steps"]
        for r, dst in ((a, gens), (b, gens32)):
            dst.append({"prompt_index": p, "new_tokens": r["gen"].tolist(),
                        "min_top1_top2_margin": r["gap"], "min_margin_over_logit_std": r["over_std"],
                        "min_margin_over_abs_top1": r["rel"],
                        "teacher_forced_argmax_matches": r["tf_match"],
                        "routing_margins_over_prompt_and_continuation": {
                            "group_margin_min": r["group_margin"],
                            "expert_margin_min": r["expert_margin"]},
                        "chosen_experts_have_positive_biased_scores": r["positive"]})
        d = (a["logits"] - b["logits"]).abs()
        cos = torch.nn.functional.cosine_similarity(a["logits"], b["logits"], dim=-1)
        stats.append({"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                      "p99_abs": float(d.flatten().quantile(0.99)),
                      "logit_absmax": float(b["logits"].abs().max()),
                      "cosine_min_over_positions": float(cos.min()),
                      "argmax_agreement": float((a["logits"].argmax(-1) == b["logits"].argmax(-1))
                                                .float().mean())})
        same = (a["gen"] == b["gen"]).tolist() + [False]
        prefix.append(same.index(False))
        rel32.append(b["rel"])
    _, ids = prompts[hidden]
    for suffix, model, rec in (("", bf16, rec16), ("_f32compute", f32, rec32)):
        rec.clear()
        with torch.no_grad():
            model(ids[None])
        tensors[f"residual_stream{suffix}"] = torch.stack(rec.residual)
        tensors[f"final_norm_output{suffix}"] = rec.final
        for layer, (logits, w, idx) in rec.routers.items():
            order = idx.argsort(-1)
            tensors[f"router.layer{layer}.router_logits{suffix}"] = logits.float()
            tensors[f"router.layer{layer}.topk_ids{suffix}"] = idx.gather(1, order).long()
            tensors[f"router.layer{layer}.topk_weights{suffix}"] = w.float().gather(1, order)
    moe_layers = sorted(rec32.routers)
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    import transformers as tf
    L = f32.config.num_hidden_layers
    meta = {
        "case": os.path.basename(os.path.normpath(out)), "architecture": "DeepseekV3ForCausalLM",
        "model_type": "deepseek_v3", "dtype": "bfloat16", "seed": T.SEED, "init_std": 0.02,
        "trained": "see train_log.json; made by tests/tools/train_tiny.py",
        "n_params": sum(p.numel() for p in f32.parameters()),
        "transformers_version": tf.__version__, "torch_version": torch.__version__,
        "attn_implementation": "eager", "experts_implementation": "eager",
        "tokenizer_sha256": hashlib.sha256(open(os.path.join(out, "tokenizer.json"), "rb").read())
        .hexdigest(),
        "special_tokens": {"bos": 0, "eos": 1, "pad": 2},
        "prompts": [{"index": i, "length": int(ids.shape[0]), "input_ids": ids.tolist(),
                     "text": text} for i, (text, ids) in enumerate(prompts)],
        "generation": gens, "generation_f32compute": gens32,
        "hidden_states": {"prompt_index": hidden,
                          "residual_stream_shape": list(tensors["residual_stream"].shape),
                          "convention": "as in tests/fixtures/README.md; `*_f32compute` tensors "
                                        "are the same quantities in the fp32 computation"},
        "routing": {"prompt_index": hidden, "moe_layers": moe_layers},
        "prompt_attempts": attempts,
        "precision": {
            "bf16_vs_f32compute_logits_max_abs_diff_per_prompt": [s["max_abs"] for s in stats],
            "bf16_vs_f32compute_logits_stats_per_prompt": stats,
            "f32compute_greedy_tokens_identical_to_bf16": all(
                p == N_NEW for p in prefix),
            "f32compute_vs_bf16_greedy_common_prefix_len_per_prompt": prefix,
            "f32compute_min_margin_over_abs_top1_per_prompt": rel32},
        "mtp": {"num_nextn_predict_layers": 1, "tensors": f"model.layers.{L}.*",
                "not_run_by_transformers_forward": True},
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for k, v in tensors.items()},
    }
    json.dump(meta, open(os.path.join(out, "reference.json"), "w"), indent=1)
    rec16.remove()
    rec32.remove()
    return f32, meta


def mtp_eval(f32, held_rows, held_docs, tok):
    """The stored MTP module, loaded back by transformers' MtpModel: teacher-forced
    next-next-token accuracy on the held-out rows, and the share of 1-token drafts greedy decoding
    would accept (MTP's guess for token t+2, given the main model's greedy token t+1, equals the
    main model's greedy token t+2) over greedy continuations of held-out fortunes."""
    from transformers.modeling_layers import MtpModel
    mtp = MtpModel.from_pretrained(f32).eval()
    main_correct = correct = total = 0
    with torch.no_grad():
        for i in range(0, held_rows.shape[0], 16):
            ids = held_rows[i:i + 16, :-1]
            h = f32.model(input_ids=ids).last_hidden_state
            main_correct += int((f32.lm_head(h)[:, :-2].argmax(-1) == ids[:, 1:-1]).sum())
            pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
            m = mtp._project_to_logits(mtp.forward_layer(0, h[:, :-1], pos[:, 1:], None,
                                                         input_ids=ids[:, 1:]))[:, :-1]
            correct += int((m.argmax(-1) == ids[:, 2:]).sum())
            total += ids[:, 2:].numel()
        accepted = drafts = 0
        for doc in held_docs[:32]:
            prompt = torch.tensor([0] + tok.encode(doc).ids[:6])
            f32.generation_config.eos_token_id = None
            seq = f32.generate(prompt[None], do_sample=False, max_new_tokens=24, pad_token_id=2)[0]
            h = f32.model(input_ids=seq[None]).last_hidden_state
            pos = torch.arange(seq.shape[0])[None]
            m = mtp._project_to_logits(mtp.forward_layer(0, h[:, :-1], pos[:, 1:], None,
                                                         input_ids=seq[None, 1:]))[0]
            # draft at t (t >= prompt end - 1) guesses seq[t + 2]; both from greedy decoding
            t0 = prompt.shape[0] - 1
            guess, truth = m[t0:-1].argmax(-1), seq[t0 + 2:]
            accepted += int((guess == truth).sum())
            drafts += truth.numel()
    return {"held_out_next_next_token_accuracy": correct / total,
            "held_out_next_token_accuracy_main_model": main_correct / total,
            "held_out_positions": total,
            "greedy_draft_acceptance": accepted / drafts, "greedy_drafts": drafts,
            "loaded_by": "transformers.modeling_layers.MtpModel.from_pretrained"}


def samples(f32, tok):
    out = []
    with torch.no_grad():
        for text in SAMPLE_PROMPTS:
            ids = torch.tensor([[0] + tok.encode(text).ids])
            f32.generation_config.eos_token_id = None
            g = f32.generate(ids, do_sample=False, max_new_tokens=40, pad_token_id=2)[0, ids.shape[1]:]
            out.append({"prompt": text, "greedy_40": tok.decode(g.tolist())})
    return out


def plot(log, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = 20
    smooth = [sum(log["train_loss"][max(0, i - k + 1):i + 1]) / len(log["train_loss"][max(0, i - k + 1):i + 1])
              for i in range(len(log["train_loss"]))]
    smooth_mtp = [sum(log["train_mtp_loss"][max(0, i - k + 1):i + 1]) /
                  len(log["train_mtp_loss"][max(0, i - k + 1):i + 1])
                  for i in range(len(log["train_mtp_loss"]))]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(log["step"], log["train_loss"], color="tab:blue", alpha=0.2, lw=0.8)
    ax.plot(log["step"], smooth, color="tab:blue", label=f"training (mean of {k} steps)")
    ax.plot(log["eval_step"], log["eval_loss"], "o-", color="tab:orange", label="held-out")
    ax.plot(log["step"], smooth_mtp, color="tab:green", lw=0.9,
            label="MTP (token after next), training")
    ax.plot(log["eval_step"], log["eval_mtp_loss"], "s--", color="tab:red", ms=4,
            label="MTP, held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("fortune-tiny: DeepSeek-V3 architecture, Debian fortunes (en + zh)")
    ax.set_ylim(bottom=min(log["eval_loss"] + smooth) - 0.3)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def export_all(args, ckpt):
    t0 = time.time()
    model, mtp, tok, saved = restore(args, ckpt)
    write_checkpoint(args, model, mtp, tok)
    f32, ref = reference(args.out, tok)
    mtp_stats = mtp_eval(f32, saved["held_rows"], saved["held_docs"], tok)
    log = saved["log"]
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    result = dict(saved["meta"])
    result.update({
        "final": {"train_loss_mean_last_20": sum(log["train_loss"][-20:]) / len(log["train_loss"][-20:]),
                  "train_mtp_loss_mean_last_20": sum(log["train_mtp_loss"][-20:])
                  / len(log["train_mtp_loss"][-20:]),
                  "held_out_loss": log["eval_loss"][-1],
                  "held_out_mtp_loss": log["eval_mtp_loss"][-1]},
        "mtp": mtp_stats, "epochs": log["epochs"],
        "wall_seconds": {"training_phase": saved["phase_seconds"],
                         "train_loop": log["train_seconds"], "export": None},
        "model_safetensors_bytes": size,
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "samples": samples(f32, tok),
        "reference_prompts": [p["text"] for p in ref["prompts"]],
        "curves": {k: log[k] for k in ("step", "train_loss", "train_mtp_loss", "eval_step",
                                       "eval_loss", "eval_mtp_loss", "eval_mtp_accuracy")},
    })
    plot(log, os.path.join(args.out, "loss.png"))
    result["wall_seconds"]["export"] = time.time() - t0
    json.dump(result, open(os.path.join(args.out, "train_log.json"), "w"), indent=1,
              ensure_ascii=False)
    print(json.dumps({k: result[k] for k in ("parameters", "final", "mtp", "wall_seconds",
                                             "model_safetensors_bytes")}, indent=1))
    for s in result["samples"]:
        print(repr(s["prompt"]), "->", repr(s["greedy_40"]))
