"""Generate extra Hugging Face reference cases ("other checkpoints") for troupe's tests.

Each case is a tiny random model of a supported family with deliberately awkward shapes (odd,
non-multiple-of-8 dims, MQA/MHA, other group counts and scaling factors, tied embeddings, a sliding
window shorter than the prompt), a 100-160-token prompt and 32 greedy tokens. Outputs are computed
by transformers (eager attention) on the reloaded checkpoint, like tests/fixtures.

Usage: python tests/tools/make_hf_cases.py OUT_DIR   (needs torch + transformers; not run by CI —
its outputs are committed under tests/fixtures/extra/).
"""
import json, os, sys
import torch
from safetensors.torch import save_file
import transformers as tf

OUT = sys.argv[1]
TOK = os.path.join(os.path.dirname(__file__), "..", "fixtures", "llama-tiny", "tokenizer.json")

CASES = {
    "deepseek-v3-odd": (tf.DeepseekV3Config, dict(
        vocab_size=1024, hidden_size=200, intermediate_size=328, moe_intermediate_size=36,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=5, num_key_value_heads=5,
        n_routed_experts=12, n_shared_experts=2, num_experts_per_tok=3, n_group=3, topk_group=2,
        routed_scaling_factor=1.7, norm_topk_prob=False, q_lora_rank=48, kv_lora_rank=40,
        qk_nope_head_dim=24, qk_rope_head_dim=12, v_head_dim=20, head_dim=12, qk_head_dim=36,
        max_position_embeddings=512, rms_norm_eps=1e-6, rope_interleave=True,
        rope_scaling=dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=128,
                          beta_fast=24, beta_slow=2, mscale=0.8, mscale_all_dim=0.9),
        rope_theta=5e4, tie_word_embeddings=False)),
    "deepseek-v2-odd": (tf.DeepseekV2Config, dict(
        vocab_size=1024, hidden_size=138, intermediate_size=260, moe_intermediate_size=44,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=3, num_key_value_heads=3,
        n_routed_experts=12, n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
        topk_method="group_limited_greedy", routed_scaling_factor=1.3, norm_topk_prob=False,
        q_lora_rank=None, kv_lora_rank=28, qk_nope_head_dim=20, qk_rope_head_dim=10, v_head_dim=18,
        head_dim=10, qk_head_dim=30, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_scaling=None, rope_theta=1e4, tie_word_embeddings=False)),
    "mixtral-odd": (tf.MixtralConfig, dict(
        vocab_size=1024, hidden_size=120, intermediate_size=148, num_hidden_layers=2,
        num_attention_heads=5, num_key_value_heads=1, head_dim=24, num_local_experts=6,
        num_experts_per_tok=2, sliding_window=48, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_theta=1e6, tie_word_embeddings=False)),
    "llama-odd": (tf.LlamaConfig, dict(
        vocab_size=1024, hidden_size=120, intermediate_size=300, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=6, head_dim=20, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=5e5, tie_word_embeddings=True)),
}
CLASSES = {"deepseek-v3-odd": tf.DeepseekV3ForCausalLM, "deepseek-v2-odd": tf.DeepseekV2ForCausalLM,
           "mixtral-odd": tf.MixtralForCausalLM, "llama-odd": tf.LlamaForCausalLM}

def build(name, seed):
    cfg_cls, kw = CASES[name]
    cfg = cfg_cls(initializer_range=0.15, bos_token_id=0, eos_token_id=1, pad_token_id=2, **kw)
    torch.manual_seed(seed)
    model = CLASSES[name](cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or "layernorm" in n:
                p.uniform_(0.8, 1.2)
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
        for n, p in model.named_parameters():
            if n.endswith("e_score_correction_bias"):
                p.normal_(0, 0.1)
    return model

def main():
    for name in CASES:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        for seed in range(100, 130):
            model = build(name, seed)
            model.save_pretrained(d, safe_serialization=True)
            model = CLASSES[name].from_pretrained(d, attn_implementation="eager", experts_implementation="eager").eval()
            g = torch.Generator().manual_seed(seed)
            n = 100 + seed % 61
            ids = torch.cat([torch.tensor([0]), torch.randint(3, 1024, (n - 1,), generator=g)])[None]
            with torch.no_grad():
                logits = model(ids).logits[0].float()
                out = model.generate(ids, do_sample=False, max_new_tokens=32, min_new_tokens=32,
                                     eos_token_id=None, output_scores=True, return_dict_in_generate=True)
            gen = out.sequences[0, n:]
            steps = torch.stack([s[0].float() for s in out.scores])
            top2 = steps.topk(2, dim=-1).values
            margin = float((top2[:, 0] - top2[:, 1]).min())
            if margin > 2e-3:
                break
        else:
            raise SystemExit(f"{name}: no seed with a decisive margin")
        os.system(f"cp {TOK} {d}/tokenizer.json")
        save_file({"prompt.0.input_ids": ids[0].contiguous(), "prompt.0.logits": logits.contiguous(),
                   "prompt.0.generated_ids": gen.contiguous(), "prompt.0.step_logits": steps.contiguous()},
                  os.path.join(d, "reference.safetensors"))
        json.dump({"case": name, "seed": seed, "prompt_length": n, "min_top1_top2_margin": margin,
                   "transformers_version": tf.__version__, "torch_version": torch.__version__},
                  open(os.path.join(d, "reference.json"), "w"), indent=1)
        print(name, "seed", seed, "len", n, "margin", margin, "params", sum(p.numel() for p in model.parameters()))

main()
