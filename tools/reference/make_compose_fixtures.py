#!/usr/bin/env python3
"""Composition fixtures for xcpipe from the ORIGINAL composition demo of InternLM-XComposer2.

The composition procedure (generate_article, generate_loc, generate_cap, model_select_image,
model_select_imagebase, paragraph_edit, interleav_wrap, text2instruction) lives in the authors'
demo file InternLM-XComposer-2.0/examples/gradio_demo_composition.py, not in the model code. This
script reads that file from a git mirror of InternLM/InternLM-XComposer at run time (nothing of
it is copied into this repository), executes its Demo_UI and ImageProcessor classes and the
helpers they call (examples/utils.py: StoppingCriteriaSub, get_stopping_criteria,
set_random_seed; demo_asset/serve_utils.py: Stream, Iteratorize) with the original model code of
the 7b fixture (tests/fixtures/reference/7b, loaded as make_fixtures.py loads it), drives each
step with greedy decoding, and records, for every model.generate call the steps make: the prompt
as token ids (inputs_embeds rows mapped back to the embedding rows they are), the image row
ranges (im_mask) and which image each shows, the generation parameters and the generated ids;
and each step's parsed result. tests/unit/test_compose.c compares xcpipe's steps against that.

Usage:
  /work/.venv-ref/bin/python tools/reference/make_compose_fixtures.py --orig-dir /work/ixc2-orig \
      --mirror /work/.mirror/InternLM+InternLM-XComposer/repo --out tests/fixtures/compose
"""

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import threading
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (our own fixture code: Orig, install_patches, constants)

DEMO = 'InternLM-XComposer-2.0/examples/gradio_demo_composition.py'
UTILS = 'InternLM-XComposer-2.0/examples/utils.py'
SERVE_UTILS = 'InternLM-XComposer-2.0/demo_asset/serve_utils.py'
COMMIT = '0f70c3e3'

# Every deviation from running the demo as shipped; written into expected.json.
PATCHES = [
    'Demo_UI is created without its __init__ (which loads the hub model on CUDA and builds the '
    'gradio UI); the attributes __init__ sets are set the same way: model (the tiny 7b fixture '
    'model, float32, CPU) with model.tokenizer, model.vit.resize_pos() called, '
    'vis_processor = the demo\'s ImageProcessor with image_size = the fixture\'s img_size (56) '
    'instead of 224, stopping_criteria = get_stopping_criteria([92397]), r2, withmeta, and a '
    'database object whose methods do nothing (it writes files)',
    'model.generate is wrapped: do_sample is forced to False (greedy) and every call is recorded; '
    'all other arguments pass unchanged',
    'gradio is a stub module (the steps only build UI objects with it)',
    'torch.Tensor.cuda -> identity (CPU), as make_fixtures.py',
    'after a streamed step the background generation thread is joined (the demo leaves it '
    'running) so that calls are recorded in order',
]

INSTRUCTION = ('根据以下标题：“自由软件许可证”，创作长文章。Write about the GNU General Public '
               'License and its copyleft.')
PARAS = [
    'The GNU General Public License is a free software license.',
    '它保证用户可以运行、研究、分享和修改软件。',
    'Copyleft means that derived works carry the same license terms.',
    'Permissive licenses such as MIT and BSD ask for less.',
    '最后，选择许可证时要考虑项目的目标。',
]
IMAGES = ['png_rgb_gradient_320x240.png', 'jpg_444_333x250.jpg', 'png_rgb_noise_64x48.png',
          'jpg_progressive_400x300.jpg', 'png_p_adaptive_256x256.png', 'jpg_422_250x333.jpg']
ARTICLE_MAX_NEW = 40
EDITS = [('expand', 'Add an example.'), ('rewrite', '用中文。'), ('abbreviate', ''),
         ('insert a paragraph before', 'History of the GPL.'),
         ('insert a paragraph after', 'The AGPL for network services.')]


def git_show(mirror, commit, path):
    return subprocess.run(['git', '-C', mirror, 'show', f'{commit}:{path}'], check=True,
                          capture_output=True).stdout.decode()


def pick(src, names, filename):
    """The top-level definitions and assignments named in names, compiled from src."""
    tree = ast.parse(src)
    keep = []
    for node in tree.body:
        n = None
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            n = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            n = node.targets[0].id
        if n in names:
            keep.append(node)
    found = {getattr(k, 'name', None) or k.targets[0].id for k in keep}
    if found != set(names):
        sys.exit(f'make_compose_fixtures: {filename} lacks {set(names) - found}')
    return compile(ast.Module(body=keep, type_ignores=[]), filename, 'exec')


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        return lambda *a, **k: None


class _Progress:
    def tqdm(self, it, desc=None):
        return it


class _Database:
    def __getattr__(self, name):
        return lambda *a, **k: None


def load_model(orig, d):
    """The 7b fixture model through the original code, as make_fixtures.reload_check loads it."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    import tempfile
    bin_sd = torch.load(os.path.join(d, 'pytorch_model.bin'), map_location='cpu')
    v = mf.VARIANTS['7b']
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
    return model, tokenizer, v['img_size']


class Recorder:
    def __init__(self, model, image_embeds):
        self.model = model
        self.calls = []
        self.gen = model.generate
        w = model.model.tok_embeddings.weight.detach()
        self.row_id = {}
        for i in range(w.shape[0]):
            self.row_id.setdefault(w[i].numpy().tobytes(), i)
        self.image_embeds = image_embeds  # name -> (T, H)
        model.generate = self

    def which_image(self, block):
        best, name = None, None
        for n, e in self.image_embeds.items():
            d = (e - block).abs().max().item()
            if best is None or d < best:
                best, name = d, n
        if best > 1e-3:
            raise RuntimeError(f'an image block matches no known image (closest {best})')
        return name

    def __call__(self, *args, **kw):
        kw['do_sample'] = False
        ent = {}
        if args:
            ent['mode'] = 'ids'
            ent['prompt'] = args[0][0].tolist()
            ent['images'] = []
        else:
            ent['mode'] = 'embeds'
            emb = kw['inputs_embeds'][0].detach().float()
            mask = kw.get('im_mask')
            mask = mask[0].tolist() if mask is not None else [False] * emb.shape[0]
            ids, images, r = [], [], 0
            while r < emb.shape[0]:
                if mask[r]:
                    e = r
                    while e < emb.shape[0] and mask[e]:
                        e += 1
                    t = next(iter(self.image_embeds.values())).shape[0]
                    for s in range(r, e, t):  # adjacent images form one run
                        images.append([s, min(s + t, e), self.which_image(emb[s:s + t])])
                    ids.extend([-1] * (e - r))
                    r = e
                else:
                    ids.append(self.row_id[emb[r].numpy().tobytes()])
                    r += 1
            ent['prompt'] = ids
            ent['images'] = images
        for k in ('max_new_tokens', 'max_length', 'repetition_penalty', 'top_p', 'top_k',
                  'temperature'):
            if kw.get(k) is not None:
                ent[k] = float(kw[k]) if isinstance(kw[k], float) else kw[k]
        ent['stopping_criteria'] = [type(c).__name__ for c in (kw.get('stopping_criteria') or [])
                                    if type(c).__name__ != 'Stream'] + (
            ['Stream'] if any(type(c).__name__ == 'Stream'
                              for c in (kw.get('stopping_criteria') or [])) else [])
        self.calls.append(ent)
        out = self.gen(*args, **kw)
        o = out[0].tolist()
        if ent['mode'] == 'ids':
            ent['generated'] = o[len(ent['prompt']):]
        else:
            if o[0] != self.model.tokenizer.bos_token_id:
                raise RuntimeError('generate with inputs_embeds did not start from BOS')
            ent['generated'] = o[1:]
        return out


def join_threads():
    for t in threading.enumerate():
        if t is not threading.current_thread():
            t.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--orig-dir', required=True)
    ap.add_argument('--mirror', required=True, help='git dir of InternLM/InternLM-XComposer')
    ap.add_argument('--commit', default=COMMIT)
    ap.add_argument('--fixture', default='tests/fixtures/reference/7b')
    ap.add_argument('--images', default='tests/fixtures/image/src')
    ap.add_argument('--out', default='tests/fixtures/compose')
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    orig = mf.Orig(args.orig_dir)
    model, tokenizer, img_size = load_model(orig, args.fixture)
    model.tokenizer = tokenizer

    srcs = {p: git_show(args.mirror, args.commit, p) for p in (DEMO, UTILS, SERVE_UTILS)}
    import copy as _copy
    import re as _re
    import time as _time
    import transformers
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms.functional import InterpolationMode
    ns = dict(os=os, re=_re, copy=_copy, time=_time, torch=torch, transformers=transformers,
              transforms=transforms, InterpolationMode=InterpolationMode, Image=Image,
              hashlib=hashlib, gr=_Stub('gradio'), __name__='demo')
    import random as _random
    import numpy as _np
    ns.update(random=_random, np=_np, StoppingCriteria=transformers.StoppingCriteria,
              StoppingCriteriaList=transformers.StoppingCriteriaList)
    exec(pick(srcs[UTILS], ['StoppingCriteriaSub', 'get_stopping_criteria', 'set_random_seed'],
              UTILS), ns)
    from queue import Queue
    import traceback
    ns.update(Queue=Queue, Thread=threading.Thread, traceback=traceback)
    exec(pick(srcs[SERVE_UTILS], ['Stream', 'Iteratorize'], SERVE_UTILS), ns)
    exec(pick(srcs[DEMO], ['meta_instruction', 'max_section', 'chat_stream_output',
                           'article_stream_output', 'ImageProcessor', 'Demo_UI'], DEMO), ns)

    Demo_UI = ns['Demo_UI']
    ui = Demo_UI.__new__(Demo_UI)
    ui.reset()
    ui.model = model
    model.vit.resize_pos()
    ui.vis_processor = ns['ImageProcessor'](image_size=img_size)
    ui.stopping_criteria = ns['get_stopping_criteria']([92397])
    ui.r2 = _re.compile(r'<Seg[0-9]*>')
    ui.withmeta = False
    ui.database = _Database()

    paths = {n: os.path.join(args.images, n) for n in IMAGES}
    with torch.no_grad():
        embeds = {n: model.encode_img(ui.vis_processor(p)[None])[0].float()
                  for n, p in paths.items()}
    rec = Recorder(model, embeds)
    progress = _Progress()

    class Upload:
        def __init__(self, names):
            self.root = [types.SimpleNamespace(image=types.SimpleNamespace(path=paths[n]))
                         for n in names]

    def step(kind, inp, fn):
        n0 = len(rec.calls)
        try:
            result = fn()
        except (KeyError, IndexError, ValueError, RuntimeError) as e:
            # the original raises here (e.g. model_select_imagebase on a letter that names no
            # candidate): xcpipe must refuse with an error record
            result = {'error': type(e).__name__}
        join_threads()
        return dict(kind=kind, input=inp, calls=rec.calls[n0:], result=result)

    cases = []
    for with_meta in (False, True):
        ui.withmeta = with_meta
        # no uploads: article, positions, captions, selection among searched candidates, edits
        steps = []

        def article(uploads):
            ui.texts_imgs = []
            for _ in ui.generate_article(INSTRUCTION, Upload(uploads) if uploads else None, 1,
                                         1.005, ARTICLE_MAX_NEW, True, 1):
                pass
            join_threads()
            return {'paragraphs': [t[0] for t in ui.texts_imgs]}

        steps.append(step('article', {'instruction': INSTRUCTION, 'uploads': [],
                                      'max_new_tokens': ARTICLE_MAX_NEW},
                          lambda: article([])))
        sections = [f'<Seg{i}>' + ' ' + it + '\n' for i, it in enumerate(PARAS)]

        def loc(uploads, num):
            inject, locs = ui.generate_loc(sections, [paths[n] for n in uploads], num)
            return {'answer': inject, 'positions': locs}

        steps.append(step('positions', {'paragraphs': PARAS, 'uploads': [], 'image_num': '3'},
                          lambda: loc([], '3')))
        cap_locs = [2, 0, 9, 2]
        steps.append(step('captions', {'paragraphs': PARAS, 'positions': cap_locs},
                          lambda: {'captions': [[k, v] for k, v in
                                                ui.generate_cap(sections, cap_locs,
                                                                progress).items()]}))
        cands = {2: IMAGES[0:4], 0: IMAGES[4:6]}
        steps.append(step('select', {'paragraphs': PARAS, 'slots': [2, 0],
                                     'candidates': [cands[2], cands[0]]},
                          lambda: {'selected': [[k, v] for k, v in ui.model_select_image(
                              PARAS, [2, 0], {k: [paths[n] for n in v]
                                              for k, v in cands.items()}, progress).items()]}))
        for etype, einst in EDITS:
            def edit(etype=etype, einst=einst):
                ui.texts_imgs = [[p, None] for p in PARAS]
                last = None
                for out in ui.paragraph_edit(etype, PARAS[1], einst, 1):
                    last = out
                join_threads()
                return {'text': last[0]}
            steps.append(step('edit', {'paragraphs': PARAS, 'index': 1, 'type': etype,
                                       'instruction': einst}, edit))
        cases.append(dict(name=f'search-meta{int(with_meta)}', with_meta=with_meta, steps=steps))

        # uploads: article with images, positions with images, selection among the uploads
        ups = IMAGES[0:3]
        steps = []
        steps.append(step('article', {'instruction': INSTRUCTION, 'uploads': ups,
                                      'max_new_tokens': ARTICLE_MAX_NEW},
                          lambda: article(ups)))
        steps.append(step('positions', {'paragraphs': PARAS, 'uploads': ups, 'image_num': ''},
                          lambda: loc(ups, '')))
        base_locs = [3, 1, 3, 8]
        steps.append(step('select_base', {'paragraphs': PARAS, 'positions': base_locs,
                                          'uploads': ups},
                          lambda: {'selected': [[k, v] for k, v in ui.model_select_imagebase(
                              PARAS, base_locs, [paths[n] for n in ups], progress).items()]}))
        steps.append(step('select_base', {'paragraphs': PARAS, 'positions': [4],
                                          'uploads': ups[:1]},
                          lambda: {'selected': [[k, v] for k, v in ui.model_select_imagebase(
                              PARAS, [4], [paths[ups[0]]], progress).items()]}))
        cases.append(dict(name=f'uploads-meta{int(with_meta)}', with_meta=with_meta,
                          steps=steps))

    import transformers as tf
    out = dict(
        generated_by='tools/reference/make_compose_fixtures.py',
        demo=dict(repo='InternLM/InternLM-XComposer', commit=args.commit, path=DEMO,
                  sha256=hashlib.sha256(srcs[DEMO].encode()).hexdigest()),
        original_code_sha256=orig.sha256,
        versions=dict(torch=torch.__version__, transformers=tf.__version__),
        patches=PATCHES,
        model='reference/7b', image_size=img_size,
        image_tokens=next(iter(embeds.values())).shape[0],
        bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
        images=IMAGES, cases=cases)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'expected.json'), 'w') as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    n = sum(len(s['calls']) for c in cases for s in c['steps'])
    print(f'wrote {args.out}/expected.json: {len(cases)} cases, {n} generate calls')


if __name__ == '__main__':
    main()
