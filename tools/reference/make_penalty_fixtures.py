#!/usr/bin/env python3
"""Greedy chat() with the repetition penalty, from the original code, on the reference fixtures.

Loads each committed fixture model (tests/fixtures/reference/{7b,vl}) into the ORIGINAL
InternLM-XComposer2 code (the way make_fixtures.py's --verify-only reloads it), then runs
model.chat(do_sample=False) on the fixture's image prompt and text prompt with chat()'s default
repetition penalty (1.005, not passed: the signature's default) and with repetition_penalty=1.3.
Writes OUT/VARIANT/greedy_penalty.json: per case the prompt ('image' or 'text'), the penalty, the
generated ids, and how many of them a float32 reimplementation can be held to (the steps before
the first one whose penalized top-1/top-2 logit gap is under 1e-3; all of them in practice).

usage: make_penalty_fixtures.py --orig-dir /work/ixc2-orig [--out tests/fixtures/reference]
(run with the reference environment: /work/.venv-ref/bin/python, see README.md)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the reference environment's torch comes with it)
import torch  # noqa: E402

MIN_GAP = 1e-3
PENALTIES = (None, 1.3)  # None: chat()'s own default (1.005)


def load_original(orig, d, variant):
    """The fixture checkpoint in the original model class (as make_fixtures.reload_check)."""
    from safetensors.torch import load_file
    import tempfile
    from transformers import CLIPVisionConfig, CLIPVisionModel
    v = mf.VARIANTS[variant]
    bin_sd = torch.load(os.path.join(d, 'pytorch_model.bin'), map_location='cpu')
    exp = load_file(os.path.join(d, 'expected.safetensors'))
    with tempfile.TemporaryDirectory() as td:
        cfg = CLIPVisionConfig(hidden_size=mf.VIT_HIDDEN, intermediate_size=mf.VIT_INTERMEDIATE,
                               num_hidden_layers=mf.VIT_LAYERS, num_attention_heads=mf.VIT_HEADS,
                               image_size=mf.VIT_STOCK_IMAGE, patch_size=mf.VIT_PATCH,
                               hidden_act='quick_gelu', layer_norm_eps=1e-5,
                               projection_dim=mf.VIT_HIDDEN)
        clip = CLIPVisionModel(cfg)
        pre = 'vit.vision_tower.'
        csd = {k[len(pre):]: t for k, t in bin_sd.items() if k.startswith(pre)}
        if csd['vision_model.embeddings.position_embedding.weight'].shape[0] != 577:
            csd.pop('vision_model.embeddings.position_embedding.weight')
        clip.load_state_dict(csd, strict=False)
        clip.save_pretrained(td)
        mf.install_patches(orig, v['img_size'], td)
        config = orig.cfg.InternLMXcomposer2Config.from_pretrained(d)
        model = orig.mx.InternLMXComposer2ForCausalLM(config).float().eval()
        msd = model.state_dict()
        for k, t in bin_sd.items():
            if k.endswith('position_embedding.weight') and t.shape != msd[k].shape:
                continue
            msd[k] = t
        model.load_state_dict(msd, strict=True)
    tokenizer = orig.tok.InternLMXComposer2Tokenizer.from_pretrained(d)
    model.tokenizer = tokenizer
    return model, tokenizer, exp


def run(model, tokenizer, query, images, meta, penalty):
    rec = mf.Recorder(model)
    kw = {} if penalty is None else {'repetition_penalty': penalty}
    try:
        response, _ = model.chat(tokenizer, query, image=images, history=[], streamer=rec,
                                 max_new_tokens=mf.MAX_NEW_TOKENS, do_sample=False,
                                 meta_instruction=meta, **kw)
    finally:
        rec.close()
    return rec, response


def penalized_gaps(rec, prompt_ids, penalty, text_only):
    """Top-1/top-2 gaps of the logits after HF's RepetitionPenaltyLogitsProcessor over the ids
    generate() saw: the prompt's ids for text-only chat() (it passes input_ids), none for image
    prompts (inputs_embeds only), plus the tokens generated so far."""
    seen = list(prompt_ids) if text_only else []
    gaps = []
    for step, logits in enumerate(rec.step_logits):
        z = logits.clone()
        if seen:
            idx = torch.tensor(sorted(set(seen)))
            s = z[idx]
            z[idx] = torch.where(s < 0, s * penalty, s / penalty)
        top = z.topk(2)
        gaps.append(float(top.values[0] - top.values[1]))
        if step < len(rec.tokens):
            seen.append(rec.tokens[step])
    return gaps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--orig-dir', required=True)
    ap.add_argument('--out', default='tests/fixtures/reference')
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    orig = mf.Orig(args.orig_dir)
    for variant in ('7b', 'vl'):
        d = os.path.join(args.out, variant)
        with open(os.path.join(d, 'expected.json')) as f:
            meta = json.load(f)
        model, tokenizer, exp = load_original(orig, d, variant)
        v = mf.VARIANTS[variant]
        cases = []
        for prompt in ('image', 'text'):
            for penalty in PENALTIES:
                images = exp['images'] if prompt == 'image' else None
                query = v['query'] if prompt == 'image' else mf.TEXT_QUERY
                with torch.no_grad():
                    rec, response = run(model, tokenizer, query, images, v['meta'], penalty)
                p = 1.005 if penalty is None else penalty
                text_only = prompt == 'text'
                prompt_ids = meta['text_prompt']['input_ids'] if text_only else []
                gaps = penalized_gaps(rec, prompt_ids, p, text_only)
                argmax = [int(g.argmax()) for g in rec.step_logits]
                n_ok = len(rec.tokens)
                for i, g in enumerate(gaps[:len(rec.tokens)]):
                    if g < MIN_GAP:
                        n_ok = i
                        break
                cases.append(dict(prompt=prompt, repetition_penalty=p, tokens=rec.tokens,
                                  compare=n_ok, min_gap=min(gaps[:len(rec.tokens)] or [0]),
                                  differs_from_unpenalized=rec.tokens != (
                                      meta['text_prompt' if text_only else 'image_prompt']
                                      ['greedy_tokens']),
                                  response=response))
                print(f'  {variant} {prompt} penalty {p}: {len(rec.tokens)} tokens, compare '
                      f'{n_ok}, min gap {cases[-1]["min_gap"]:.3g}, differs from penalty 1: '
                      f'{cases[-1]["differs_from_unpenalized"]}')
                del argmax
        out = dict(generated_by='tools/reference/make_penalty_fixtures.py',
                   original_code_sha256=orig.sha256,
                   versions=dict(torch=torch.__version__,
                                 transformers=__import__('transformers').__version__),
                   call='model.chat(tokenizer, query, image=images, history=[], '
                        'max_new_tokens=40, do_sample=False, meta_instruction=meta'
                        '[, repetition_penalty=1.3])',
                   cases=cases)
        with open(os.path.join(d, 'greedy_penalty.json'), 'w') as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
            f.write('\n')


if __name__ == '__main__':
    main()
