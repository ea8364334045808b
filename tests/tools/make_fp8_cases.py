"""Make troupe's FP8 fixtures and their Hugging Face reference (issue #17).

For each case: `troupe quantize --fp8` writes the FP8 block-scaled folder from an existing fp32
fixture (DeepSeek-V3's layout: F8_E4M3 linear weights + f32 `weight_scale_inv` per 128x128 block),
then the reference is computed by transformers on the *dequantised* weights, because transformers
cannot run FP8 on CPU:

  - every `X.weight` of dtype float8_e4m3fn is dequantised with torch as DeepSeek's
    `inference/fp8_cast_bf16.py` does (`weight_dequant`: each element times its block's
    `weight_scale_inv`), i.e. `w.float() * scale` with the scale expanded per 128x128 block
    (cropped at the edges), and the `weight_scale_inv` tensors are dropped;
  - the result is KEPT IN FLOAT32 (fp8_cast_bf16.py would round it to bf16) because the reference
    runs in f32, as troupe computes;
  - the dequantised state is saved next to the FP8 config without `quantization_config` and read
    back with `from_pretrained(attn_implementation="eager", experts_implementation="eager")`, as the
    other fixtures were; logits, greedy tokens (EOS disabled) and step logits come from that model.

torch decodes the e4m3 bytes itself, so the reference does not depend on troupe's e4m3 decoding.
The prompts are the source fixture's prompts.

Usage: nice python tests/tools/make_fp8_cases.py TROUPE_BINARY
(run from the workspace root, with torch + transformers; not run by CI — outputs are committed
under tests/fixtures/*-fp8/).
"""
import json, os, shutil, subprocess, sys, tempfile
import torch
from safetensors.torch import load_file, save_file
import transformers as tf

TROUPE = sys.argv[1]
FIX = os.path.join("tests", "fixtures")
# (FP8 case, source fixture, new tokens)
CASES = [
    ("deepseek-v3-tiny-fp8", "deepseek-v3-tiny", 16),
    ("deepseek-v3-odd-fp8", "extra/deepseek-v3-odd", 32),
]
BLOCK = 128


def dequantize(state):
    out = {}
    for name, t in state.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = state[name + "_scale_inv"]
            rows, cols = t.shape
            full = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
            out[name] = (t.float() * full).contiguous()
        else:
            out[name] = t
    return out


def prompts_of(src):
    ref = load_file(os.path.join(FIX, src, "reference.safetensors"))
    ids = []
    i = 0
    while f"prompt.{i}.input_ids" in ref:
        ids.append(ref[f"prompt.{i}.input_ids"])
        i += 1
    return ids


def main():
    for case, src, new_tokens in CASES:
        out = os.path.join(FIX, case)
        if os.path.exists(out):
            shutil.rmtree(out)
        subprocess.run([TROUPE, "quantize", "--fp8", "-m", os.path.join(FIX, src), "--out", out],
                       check=True)
        if not os.path.exists(os.path.join(out, "tokenizer.json")):
            shutil.copy(os.path.join(FIX, "llama-tiny", "tokenizer.json"), out)
        state = load_file(os.path.join(out, "model.safetensors"))
        n_fp8 = sum(1 for t in state.values() if t.dtype == torch.float8_e4m3fn)
        deq = dequantize(state)
        cfg = json.load(open(os.path.join(out, "config.json")))
        qc = cfg.pop("quantization_config")
        with tempfile.TemporaryDirectory() as tmp:
            json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=1)
            save_file(deq, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            model = tf.AutoModelForCausalLM.from_pretrained(
                tmp, attn_implementation="eager", experts_implementation="eager",
                dtype=torch.float32).eval()
        tensors = {}
        meta = {"case": case, "source_fixture": src, "quantization_config": qc,
                "fp8_tensors": n_fp8, "dequantisation": "w.float() * weight_scale_inv expanded per "
                "128x128 block, kept in float32 (DeepSeek fp8_cast_bf16.py without the bf16 rounding)",
                "compute_dtype": "float32", "new_tokens": new_tokens, "prompts": [],
                "transformers_version": tf.__version__, "torch_version": torch.__version__}
        for i, ids in enumerate(prompts_of(src)):
            x = ids[None]
            with torch.no_grad():
                logits = model(x).logits[0].float()
                gen = model.generate(x, do_sample=False, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, eos_token_id=None,
                                     output_scores=True, return_dict_in_generate=True)
            new = gen.sequences[0, x.shape[1]:]
            steps = torch.stack([s[0].float() for s in gen.scores])
            top2 = steps.topk(2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
            tensors[f"prompt.{i}.input_ids"] = ids.contiguous()
            tensors[f"prompt.{i}.logits"] = logits.contiguous()
            tensors[f"prompt.{i}.generated_ids"] = new.contiguous()
            tensors[f"prompt.{i}.step_logits"] = steps.contiguous()
            meta["prompts"].append({"index": i, "length": int(x.shape[1]),
                                    "generated_ids": new.tolist(),
                                    "min_top1_top2_margin": margin,
                                    "max_abs_logit": float(logits.abs().max())})
            print(case, "prompt", i, "len", x.shape[1], "margin", margin)
        save_file(tensors, os.path.join(out, "reference.safetensors"))
        json.dump(meta, open(os.path.join(out, "reference.json"), "w"), indent=1)


main()
