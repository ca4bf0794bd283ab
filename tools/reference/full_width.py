#!/usr/bin/env python3
"""Real-width conformance fixture: the ORIGINAL InternLM-XComposer2 code at the real VL widths.

A checkpoint with the real widths but two decoder layers (InternLM2-7B: hidden 4096, 32/8 heads,
head dim 128, FFN 14336, PLoRA r = 256 on all five projections, vocab 92,544; the full 24-layer
CLIP ViT-L/14 at 490 px with its 1226-row position table; projector 1024 -> 4096 -> 4096) is
written by `xcpipe model make-random --like vl --layers 2` (seeded, deterministic: the test writes
the same bytes again, so the checkpoint is never committed). The original model code loads it in
float32 on the CPU and answers one image chat prompt greedily. Only small expected values are
written: for the CLIP features, the projected image rows, every hidden state of the prefill and
the logits, the sum and absolute sum of the whole tensor plus 32 columns of a few rows; the top-5
logits of those rows; the 16 greedy tokens with their top-2 logits. The C test
(tests/unit/test_full_width.c, ctest label `slow`) regenerates the checkpoint and compares.

The only patches (listed in PATCHES and written into the fixture):
  * torch.Tensor.cuda -> identity (CPU only);
  * build_vision_tower -> the original CLIPVisionTower given a local random CLIPVisionModel with
    the openai/clip-vit-large-patch14-336 geometry (no network); its weights, like every other
    weight, are then replaced by the checkpoint's.
Nothing else is changed: resize_pos (24 -> 35), the projector (1024 -> 4096) and PLoRA (r 256)
run as shipped.

Usage (about 10 GB of memory and a few minutes on 2 cores):
  /work/.venv-ref/bin/python tools/reference/full_width.py --orig-dir /work/ixc2-orig \
      --xcpipe build/bin/xcpipe --work /work/big/fw --out tests/fixtures/reference/full
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (Orig, image_segments, prefill, META_VL, tokenizer files)

LAYERS = 2
IMG = 490
QUERY = '<ImageHere>Describe the image in detail.'
MAX_NEW_TOKENS = 16
TOPK = 5
N_COLS = 32

PATCHES = [
    'torch.Tensor.cuda -> identity (CPU only)',
    "modeling_internlm_xcomposer2.build_vision_tower -> the original CLIPVisionTower class, given "
    "a local directory holding a random CLIPVisionModel with the openai/clip-vit-large-patch14-336 "
    "geometry (1024 wide, 24 layers, 16 heads, 336 px, patch 14) instead of the hub name (no "
    "network); resize_pos then runs unchanged (24 -> 35), and every weight is replaced by the "
    "checkpoint's",
]

TOLERANCES = dict(
    vit_out=dict(atol=1e-4, rtol=1e-4),
    img_embeds=dict(atol=1e-4, rtol=1e-4),
    hidden_states=dict(atol=2e-4, rtol=1e-4),
    logits=dict(atol=1e-3, rtol=1e-4),
    greedy_tokens='identical',
    sums='|diff| <= atol * sqrt(numel) * 4 + rtol * abs_sum (element tolerances summed as '
    'independent errors)',
)


def image_u8():
    """The test image, computed the same way in C: value(c, y, x) =
    (37 x + 101 y + 59 c + (x y mod 251)) mod 256."""
    c = torch.arange(3).view(3, 1, 1)
    y = torch.arange(IMG).view(1, IMG, 1)
    x = torch.arange(IMG).view(1, 1, IMG)
    v = (37 * x + 101 * y + 59 * c + (x * y) % 251) % 256
    return v.to(torch.uint8)


def columns(width):
    cols = list(range(8)) + [width // 16 * k + 5 for k in range(16)] + list(range(width - 8, width))
    return sorted(set(cols))


def digest(t, rows):
    """t: 2-D float tensor. Sum and absolute sum (float64) of everything, and N_COLS values of each
    listed row."""
    t = t.detach()
    cols = columns(t.shape[1])
    return collections.OrderedDict(
        shape=list(t.shape),
        sum=float(t.double().sum()),
        abs_sum=float(t.double().abs().sum()),
        cols=cols,
        rows=[int(r) for r in rows],
        values=[[float(t[r, c]) for c in cols] for r in rows],
    )


def make_clip_dir(path):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, num_channels=3, image_size=336, patch_size=14,
                           hidden_act='quick_gelu', layer_norm_eps=1e-5, projection_dim=768)
    torch.manual_seed(0)
    clip = CLIPVisionModel(cfg).half()  # random; replaced by the checkpoint's weights
    clip.save_pretrained(path)
    del clip


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--orig-dir', required=True)
    ap.add_argument('--xcpipe', default='build/bin/xcpipe')
    ap.add_argument('--work', required=True, help='directory for the 3.1 GB checkpoint')
    ap.add_argument('--out', default='tests/fixtures/reference/full')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    orig = mf.Orig(args.orig_dir)
    t0 = time.time()
    ck = os.path.join(args.work, 'ckpt')
    subprocess.run([args.xcpipe, 'model', 'make-random', '--like', 'vl', '--layers', str(LAYERS),
                    '--format', 'safetensors', '--seed', str(args.seed), '--out', ck, '--force'],
                   check=True)
    print(f'checkpoint written in {time.time() - t0:.0f} s')

    torch.Tensor.cuda = lambda self, *a, **k: self
    with tempfile.TemporaryDirectory(dir=args.work) as clip_dir:
        make_clip_dir(clip_dir)
        orig.mx.build_vision_tower = lambda: orig.bm.CLIPVisionTower(clip_dir)
        config = orig.cfg.InternLMXcomposer2Config.from_pretrained(ck)
        model = orig.mx.InternLMXComposer2ForCausalLM(config).float().eval()
    from safetensors import safe_open
    sd = model.state_dict()
    with safe_open(os.path.join(ck, 'model.safetensors'), framework='pt') as f:
        keys = set(f.keys())
        want = {k for k in sd if not k.endswith('position_ids') and '.post_layernorm.' not in k}
        if keys != want:
            sys.exit(f'full_width: checkpoint names differ from the model: only in checkpoint '
                     f'{sorted(keys - want)[:5]}, only in model {sorted(want - keys)[:5]}')
        with torch.no_grad():
            for k in sorted(keys):
                t = f.get_tensor(k)
                if t.shape != sd[k].shape:
                    sys.exit(f'full_width: {k} has shape {list(t.shape)}, the model '
                             f'{list(sd[k].shape)}')
                sd[k].copy_(t.float())
                del t
    del sd
    print(f'model loaded ({time.time() - t0:.0f} s)')
    tokenizer = orig.tok.InternLMXComposer2Tokenizer.from_pretrained(ck)
    model.tokenizer = tokenizer

    from torchvision.transforms import functional as TF
    u8 = image_u8()
    images = TF.normalize(u8.float().div(255), mf.CLIP_MEAN, mf.CLIP_STD)[None]

    # greedy chat through the original chat() (KV cache on: generate's default path)
    rec = mf.Recorder(model)
    try:
        with torch.no_grad():
            response, _ = model.chat(tokenizer, QUERY, image=images, history=[], streamer=rec,
                                     max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     repetition_penalty=1.0, meta_instruction=mf.META_VL,
                                     use_cache=True)
    finally:
        rec.close()
    step_logits = torch.stack(rec.step_logits)
    top = step_logits.topk(2, dim=-1)
    if top.indices[:, 0].tolist() != rec.tokens[:len(step_logits)]:
        sys.exit('full_width: greedy tokens are not the argmax of their logits')
    margins = (top.values[:, 0] - top.values[:, 1]).tolist()
    print(f'chat done ({time.time() - t0:.0f} s): {len(rec.tokens)} tokens, min margin '
          f'{min(margins):.4g}')

    prompt, segments, embeds, im_mask = mf.image_segments(model, tokenizer, QUERY, mf.META_VL,
                                                          rec.img_embeds)
    hs, logits, _ = mf.prefill(model, inputs_embeds=embeds, im_mask=im_mask)
    if not torch.allclose(logits[-1], step_logits[0], atol=1e-4, rtol=0):
        sys.exit('full_width: prefill logits differ from the first chat() step')
    print(f'prefill done ({time.time() - t0:.0f} s)')

    n = hs.shape[1]
    img = [s for s in segments if s['type'] == 'image'][0]['rows']
    rows = sorted({0, 1, img[0], (img[0] + img[1]) // 2, img[1] - 1, img[1], n - 2, n - 1})
    vrows = [0, 1, 612, 1223, 1224]
    vit_out = rec.vit_out[0]
    img_embeds = rec.img_embeds[0]
    lg = collections.OrderedDict()
    lg['digest'] = digest(logits[rows], list(range(len(rows))))
    lg['digest']['rows'] = rows
    t5 = logits[rows].topk(TOPK, dim=-1)
    lg['top_ids'] = t5.indices.tolist()
    lg['top_logits'] = t5.values.tolist()

    import transformers
    out = collections.OrderedDict(
        generated_by='tools/reference/full_width.py',
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      python=sys.version.split()[0]),
        original_code_sha256=orig.sha256,
        patches=PATCHES,
        checkpoint=dict(command=f'xcpipe model make-random --like vl --layers {LAYERS} '
                        f'--format safetensors --seed {args.seed}', seed=args.seed,
                        layers=LAYERS),
        image=dict(size=IMG, formula='(37 x + 101 y + 59 c + (x y mod 251)) mod 256',
                   mean=mf.CLIP_MEAN, std=mf.CLIP_STD),
        query=QUERY,
        meta_instruction=mf.META_VL,
        prompt=prompt,
        segments=segments,
        seq_len=n,
        vit_out=digest(vit_out, vrows),
        img_embeds=digest(img_embeds, vrows),
        hidden_states=[digest(hs[k], rows) for k in range(hs.shape[0])],
        logits=lg,
        greedy_tokens=rec.tokens,
        greedy_text=response,
        greedy_top2=top.values.tolist(),
        min_margin=min(margins),
        tolerances=TOLERANCES,
        seconds=round(time.time() - t0, 1),
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'expected.json'), 'w') as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write('\n')
    print(f'wrote {args.out}/expected.json ({time.time() - t0:.0f} s): seq {n}, tokens '
          f'{rec.tokens}')


if __name__ == '__main__':
    main()
