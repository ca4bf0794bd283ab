#!/usr/bin/env python3
"""Writes a random GGUF (llama architecture) with InternLM2's decoder shapes, for llama-bench.

Same shapes as `xcpipe bench model` (defaults: 3 layers of InternLM2-7B, 32,000-row head):
token_embd, per layer attn_norm, attn_q/k/v/output, ffn_norm, ffn_gate/up/down, then
output_norm and output. InternLM2's wqkv is split into q, k and v here, as llama.cpp's converter
does; the multiply-adds and bytes are the same. Weights are N(0, 0.02) rounded to f16 or bf16;
norms are ones. The vocabulary is placeholder tokens (llama-bench only draws random ids).

Needs the `gguf` package (PyPI) and numpy.
"""
import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("make_gguf.py: the gguf package is missing (pip install gguf)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--weights", choices=["f16", "bf16"], default="bf16")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--inter", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads:
        sys.exit("make_gguf.py: hidden must divide by heads and heads by kv-heads")
    rng = np.random.default_rng(a.seed)
    head_dim = a.hidden // a.heads
    kv = a.kv_heads * head_dim

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("random InternLM2 shapes")
    w.add_context_length(4096)
    w.add_embedding_length(a.hidden)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.inter)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(a.vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if a.weights == "bf16" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"<t{i}>".encode() for i in range(3, a.vocab)])
    w.add_token_scores([0.0] * a.vocab)
    w.add_token_types([2, 3, 3] + [1] * (a.vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(name, rows, cols):
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        if a.weights == "f16":
            w.add_tensor(name, x.astype(np.float16))
        else:
            bits = x.view(np.uint32)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            w.add_tensor(name, rounded, raw_shape=(rows, cols), raw_dtype=gguf.GGMLQuantizationType.BF16)

    def ones(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    mat("token_embd.weight", a.vocab, a.hidden)
    for l in range(a.layers):
        p = f"blk.{l}."
        ones(p + "attn_norm.weight", a.hidden)
        mat(p + "attn_q.weight", a.hidden, a.hidden)
        mat(p + "attn_k.weight", kv, a.hidden)
        mat(p + "attn_v.weight", kv, a.hidden)
        mat(p + "attn_output.weight", a.hidden, a.hidden)
        ones(p + "ffn_norm.weight", a.hidden)
        mat(p + "ffn_gate.weight", a.inter, a.hidden)
        mat(p + "ffn_up.weight", a.inter, a.hidden)
        mat(p + "ffn_down.weight", a.hidden, a.inter)
    ones("output_norm.weight", a.hidden)
    mat("output.weight", a.vocab, a.hidden)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
