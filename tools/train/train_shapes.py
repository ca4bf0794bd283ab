#!/usr/bin/env python3
"""Trains the shapes-world XComposer2 (models/shapes/) with the ORIGINAL model code on the CPU.

The model is InternLMXComposer2ForCausalLM from the original remote code (imported from
--orig-dir, patched to small sizes exactly as tools/reference/make_fixtures.py does), with a tiny
CLIP ViT trained from scratch and PLoRA on the image rows as the original forward() applies it.
Training sequences are laid out exactly as chat() lays out its prompts (interleav_wrap_chat for
image questions: BOS per text segment; build_inputs for text-only ones: double BOS), with no meta
instruction, and the answer plus [UNUSED_TOKEN_145] appended; the loss is on the answer tokens
only. With --q-per-image each picture is asked several questions, each still its own single-turn
row in that layout (rows share the picture's CLIP forward). The data come from
tools/train/shapes_world.py, generated on the fly (item seeds 0, 1, ...);
held-out accuracy is measured with greedy chat() on item seeds from 1e9 on, which training never
sees. See models/shapes/README.md.

  /work/.venv-ref/bin/python tools/train/train_shapes.py --orig-dir /work/ixc2-orig \
      --out models/shapes
"""

import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'reference'))
import shapes_world as W  # noqa: E402
import make_fixtures as MF  # noqa: E402

# Sizes
LLM_HIDDEN = 128
LLM_INTERMEDIATE = 384
LLM_LAYERS = 4
LLM_HEADS = 4
LLM_KV_HEADS = 2
PLORA_R = 16  # r = alpha (scale 1.0, as the real models)
VIT_HIDDEN = 128  # 2 heads of 64 (the head dim of ViT-L)
VIT_HEADS = 2
VIT_LAYERS = 3
VIT_INTERMEDIATE = 512
VOCAB = 400  # at most (spm_train --hard_vocab_limit=false)

HELD_OUT_SEED = 1000000000
END = '[UNUSED_TOKEN_145]'


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------------
# Tokenizer


def corpus_lines(n=20000):
    lines = set()
    for s in range(n):
        it = W.item(s)
        lines.add(it['question'])
        lines.add(it['answer'])
        lines.add(W.caption(it['scene']))
    extra = ['[UNUSED_TOKEN_146]system', '[UNUSED_TOKEN_146]user', '[UNUSED_TOKEN_146]assistant',
             'Describe the image.', 'What is in the picture?']
    return sorted(lines) + extra * 20


def train_tokenizer(path):
    spm_train = shutil.which('spm_train') or '/usr/bin/spm_train'
    with tempfile.TemporaryDirectory() as td:
        with open(os.path.join(td, 'corpus.txt'), 'w') as f:
            for ln in corpus_lines():
                f.write(ln + '\n')
        cmd = [
            spm_train, '--input=corpus.txt', '--model_prefix=shapes', '--model_type=bpe',
            f'--vocab_size={VOCAB}', '--hard_vocab_limit=false', '--byte_fallback=true',
            f'--user_defined_symbols={",".join(MF.USER_SYMBOLS)}', '--character_coverage=1.0',
            '--normalization_rule_name=identity', '--add_dummy_prefix=true',
            '--remove_extra_whitespaces=false', '--split_digits=true',
            '--allow_whitespace_only_pieces=true', '--unk_id=0', '--bos_id=1', '--eos_id=2',
            '--pad_id=-1', '--num_threads=1', '--input_sentence_size=0',
            '--shuffle_input_sentence=false', '--minloglevel=2'
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=td)
        shutil.copyfile(os.path.join(td, 'shapes.model'), path)


def write_tokenizer_files(d):
    for name, content in (('tokenizer_config.json', MF.TOKENIZER_CONFIG),
                          ('special_tokens_map.json', MF.SPECIAL_TOKENS_MAP)):
        with open(os.path.join(d, name), 'w') as f:
            json.dump(content, f, indent=2)
            f.write('\n')


# ------------------------------------------------------------------------------------------------
# Model


def set_sizes(plora_r):
    """make_fixtures' patches read these module constants when they are installed."""
    MF.LLM_HIDDEN = LLM_HIDDEN
    MF.VIT_HIDDEN = VIT_HIDDEN
    MF.PLORA_R = MF.PLORA_ALPHA = plora_r


def clip_config():
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=VIT_HIDDEN, intermediate_size=VIT_INTERMEDIATE,
                            num_hidden_layers=VIT_LAYERS, num_attention_heads=VIT_HEADS,
                            num_channels=3, image_size=W.IMG, patch_size=MF.VIT_PATCH,
                            hidden_act='quick_gelu', layer_norm_eps=1e-5,
                            projection_dim=VIT_HIDDEN)


def llm_config(orig, vocab):
    return orig.cfg.InternLMXcomposer2Config(
        vocab_size=vocab, hidden_size=LLM_HIDDEN, intermediate_size=LLM_INTERMEDIATE,
        num_hidden_layers=LLM_LAYERS, num_attention_heads=LLM_HEADS,
        num_key_value_heads=LLM_KV_HEADS, hidden_act='silu', max_position_embeddings=32768,
        initializer_range=0.02, rms_norm_eps=1e-5, use_cache=False, pad_token_id=2,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, bias=False, rope_theta=1000000,
        rope_scaling={'type': 'dynamic', 'factor': 1.0}, max_length=4096, img_size=W.IMG,
        attn_implementation='eager', torch_dtype='bfloat16')


def build(orig, vocab, seed, work, plora_r=PLORA_R, state=None):
    """The original model at the shapes sizes: a fresh one (seeded), or one holding `state`."""
    from transformers import CLIPVisionModel
    set_sizes(plora_r)
    clip_dir = os.path.join(work, 'clip')
    torch.manual_seed(seed)
    clip = CLIPVisionModel(clip_config())
    if state is not None:
        pre = 'vit.vision_tower.'
        clip.load_state_dict({k[len(pre):]: v for k, v in state.items() if k.startswith(pre)},
                             strict=False)
    clip.save_pretrained(clip_dir)
    MF.install_patches(orig, W.IMG, clip_dir)
    torch.manual_seed(seed + 1)
    model = orig.mx.InternLMXComposer2ForCausalLM(llm_config(orig, vocab)).float()
    model.requires_grad_(True)  # load_model() froze the (here untrained) CLIP
    if state is not None:
        sd = model.state_dict()
        for k, v in state.items():
            sd[k] = v.float()
        model.load_state_dict(sd, strict=True)
    return model


def checkpoint_state(model):
    sd = collections.OrderedDict()
    for k, t in model.state_dict().items():
        if k.endswith('position_ids') or 'inv_freq' in k or k.endswith('_cached'):
            continue
        if '.post_layernorm.' in k:  # unused, and absent from the real VL checkpoint
            continue
        sd[k] = t.detach().to(torch.bfloat16).contiguous()
    return sd


def save_model(model, config, tok_path, out, extra_meta):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    sd = checkpoint_state(model)
    save_file(dict(sd), os.path.join(out, 'model.safetensors'), metadata={'format': 'pt'})
    d = config.to_diff_dict()
    d.pop('transformers_version', None)
    d.update({
        'architectures': ['InternLMXComposer2ForCausalLM'],
        'auto_map': {
            'AutoConfig': 'configuration_internlm_xcomposer2.InternLMXcomposer2Config',
            'AutoModel': 'modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM',
            'AutoModelForCausalLM': 'modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM',
        },
        'model_type': 'internlmxcomposer2',
        'torch_dtype': 'bfloat16',
        'transformers_version': '4.33.1',
    })
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(dict(sorted(d.items())), f, indent=2)
        f.write('\n')
    if os.path.abspath(tok_path) != os.path.abspath(os.path.join(out, 'tokenizer.model')):
        shutil.copyfile(tok_path, os.path.join(out, 'tokenizer.model'))
    write_tokenizer_files(out)
    with open(os.path.join(out, 'training.json'), 'w') as f:
        json.dump(extra_meta, f, indent=1)
        f.write('\n')


# ------------------------------------------------------------------------------------------------
# Data


def pixels_tensor(px):
    """uint8 (S, S, 3) -> (3, S, S) f32 exactly as ToTensor + Normalize (no resize: S = img_size)."""
    from torchvision.transforms import functional as TF
    t = torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1).float().div(255)
    return TF.normalize(t, MF.CLIP_MEAN, MF.CLIP_STD)


class Layout:
    """Token ids of the chat() layout, cached per question/answer."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.head = tok('[UNUSED_TOKEN_146]user\n').input_ids  # BOS + ids (before the image)
        self.cache = {}

    def image_item(self, q, a):
        key = ('i', q, a)
        if key not in self.cache:
            tail = f'{q}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n'
            p = self.tok(tail).input_ids
            full = self.tok(tail + a + END).input_ids
            if full[:len(p)] != p:
                raise RuntimeError(f'answer tokens merge with the prompt: {tail!r} + {a!r}')
            self.cache[key] = (p, full[len(p):])
        return self.cache[key]

    def text_item(self, q, a):
        key = ('t', q, a)
        if key not in self.cache:
            p = self.model.build_inputs(self.tok, q, [], '')['input_ids'][0].tolist()
            prompt = ('<s>[UNUSED_TOKEN_146]user\n' + q +
                      '[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n')
            full = self.tok([prompt + a + END])['input_ids'][0]
            if full[:len(p)] != p:
                raise RuntimeError(f'answer tokens merge with the prompt: {q!r} + {a!r}')
            self.cache[key] = (p, full[len(p):])
        return self.cache[key]


GRID = W.IMG // MF.VIT_PATCH  # 6 x 6 patches, 2 x 2 per cell


def patch_targets(items):
    """Per-patch (shape, colour) classes of the image items for the auxiliary probe: the object in
    the patch's cell (every patch of a cell holds part of it), or 0 = background."""
    shapes, colours = [], []
    seen = set()
    for it in items:
        if not it['image'] or it.get('img_idx', -1) in seen:
            continue
        if 'img_idx' in it:  # one target per picture, however many rows ask about it
            seen.add(it['img_idx'])
        by_cell = {o['cell']: o for o in it['scene']['objects']}
        s = torch.zeros(GRID * GRID, dtype=torch.long)
        c = torch.zeros(GRID * GRID, dtype=torch.long)
        for py in range(GRID):
            for px in range(GRID):
                o = by_cell.get(CELLS[py * GRID + px].item())
                if o is not None:
                    s[py * GRID + px] = 1 + o['shape']
                    c[py * GRID + px] = 1 + o['color']
        shapes.append(s)
        colours.append(c)
    return torch.stack(shapes), torch.stack(colours)


# the grid cell of each patch (the third probe: where a feature is, so that position words can be
# read from the image rows' contents)
CELLS = torch.tensor([(py * 3 // GRID) * 3 + px * 3 // GRID for py in range(GRID)
                      for px in range(GRID)])


def hard_exists(rng, sc):
    """A balanced yes/no binding question about scene `sc` (training only, --exists-hard): 'yes'
    names a present object's colour and shape; 'no' names a present colour with another present
    object's shape, or a present shape with a colour no object has, or a present colour with a
    shape no object has, so that the answer depends on which colour goes with which shape."""
    objs = sc['objects']
    present = {(o['color'], o['shape']) for o in objs}
    if rng.rnd(2):
        o = objs[rng.rnd(len(objs))]
        c, s, a = o['color'], o['shape'], 'yes'
    else:
        cands = [(p['color'], q['shape']) for p in objs for q in objs
                 if (p['color'], q['shape']) not in present]  # swapped bindings
        if not cands or rng.rnd(3) == 0:  # one part present, the other absent
            o = objs[rng.rnd(len(objs))]
            if rng.rnd(2):
                cands = [(c, o['shape']) for c in range(len(W.COLOURS))
                         if (c, o['shape']) not in present]
            else:
                cands = [(o['color'], s) for s in range(len(W.SHAPES))
                         if (o['color'], s) not in present]
        c, s = cands[rng.rnd(len(cands))]
        a = 'no'
    return f'Is there a {W.COLOURS[c]} {W.SHAPES[s]}?', a


def colour_key_question(rng, sc):
    """A training-only question keyed by colour (--colour-key-q): 'What shape is the red one?'
    about an object whose colour no other object has; None when every colour is shared. No
    evaluated question looks an object up by its colour, but 'Is there a red square?' needs it."""
    objs = sc['objects']
    uniq = [o for o in objs if sum(p['color'] == o['color'] for p in objs) == 1]
    if not uniq:
        return None
    o = uniq[rng.rnd(len(uniq))]
    return f'What shape is the {W.COLOURS[o["color"]]} one?', W.SHAPES[o['shape']]


def make_batch(model, lay, items, images, img_embeds=None, vit_out=None):
    """inputs_embeds, im_mask and labels (-100 except on answer tokens) for a batch, right-padded,
    and the CLIP features of the images. `images` holds the image items' pixel tensors in order
    (or img_embeds/vit_out their features, computed already)."""
    emb = model.model.tok_embeddings
    if images and img_embeds is None:
        vit_out = model.vit(torch.stack(images))
        img_embeds = model.vision_proj(vit_out)
    rows, masks, labels = [], [], []
    k = 0
    for it in items:
        if it['image']:
            p, ans = lay.image_item(it['question'], it['answer'])
            ids_a = torch.tensor(lay.head)
            ids_b = torch.tensor(p + ans)
            e = torch.cat([emb(ids_a), img_embeds[it.get('img_idx', k)], emb(ids_b)])
            k += 1
            n_img = img_embeds.shape[1]
            m = torch.cat([torch.zeros(len(lay.head)), torch.ones(n_img), torch.zeros(len(ids_b))])
            lab = [-100] * (len(lay.head) + n_img + len(p)) + ans
        else:
            p, ans = lay.text_item(it['question'], it['answer'])
            e = emb(torch.tensor(p + ans))
            m = torch.zeros(len(p) + len(ans))
            lab = [-100] * len(p) + ans
        rows.append(e)
        masks.append(m)
        labels.append(torch.tensor(lab))
    L = max(r.shape[0] for r in rows)
    E = torch.zeros(len(rows), L, LLM_HIDDEN)
    M = torch.zeros(len(rows), L, dtype=torch.bool)
    T = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, (e, m, lab) in enumerate(zip(rows, masks, labels)):
        E[i, :e.shape[0]] = e
        M[i, :m.shape[0]] = m.bool()
        T[i, :lab.shape[0]] = lab
    return E, M, T, vit_out, img_embeds


# ------------------------------------------------------------------------------------------------
# Evaluation (greedy chat(), as a user of the original code runs it)


def greedy_answer(model, tok, it, max_new_tokens=48):
    image = None
    if it['image']:
        image = pixels_tensor(W.render(it['scene']))[None]
    with torch.no_grad():
        response, _ = model.chat(tok, ('<ImageHere>' if image is not None else '') +
                                 it['question'], image=image, history=[], do_sample=False,
                                 max_new_tokens=max_new_tokens, repetition_penalty=1.0,
                                 meta_instruction='')
    return response


def score(it, answer):
    """1 if correct: exact answer; for captions the colour and shape words must match."""
    if it['qtype'] == 'caption':
        return int(W.caption_words(answer) == W.caption_words(it['answer']))
    return int(answer.strip() == it['answer'])


def evaluate(model, tok, per_type, seed0=HELD_OUT_SEED):
    model.eval()
    right = collections.Counter()
    total = collections.Counter()
    exact = 0
    s = seed0
    for qt in W.QTYPES:
        for _ in range(per_type):
            it = W.item(s, qt)
            s += 1
            a = greedy_answer(model, tok, it)
            right[qt] += score(it, a)
            exact += int(a == it['answer'])
            total[qt] += 1
    model.train()
    acc = {qt: right[qt] / total[qt] for qt in W.QTYPES}
    acc['all'] = sum(right.values()) / sum(total.values())
    acc['exact'] = exact / sum(total.values())
    return acc


def fmt_acc(acc):
    return ' '.join(f'{k} {100 * v:.0f}%' for k, v in acc.items())


# ------------------------------------------------------------------------------------------------


def main():
    global LLM_HIDDEN, LLM_INTERMEDIATE, LLM_LAYERS, LLM_HEADS, LLM_KV_HEADS
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--orig-dir', required=True)
    ap.add_argument('--out', default='models/shapes')
    ap.add_argument('--steps', type=int, default=2000)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--lr', type=float, default=1.5e-3)
    ap.add_argument('--warmup', type=int, default=100)
    ap.add_argument('--seed', type=int, default=1234)
    ap.add_argument('--eval-every', type=int, default=250)
    ap.add_argument('--eval-per-type', type=int, default=8)
    ap.add_argument('--final-per-type', type=int, default=40)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--plora-r', type=int, default=PLORA_R)
    ap.add_argument('--cell-probe', type=int, default=1,
                    help='1: the probe also predicts each patch\'s grid cell')
    ap.add_argument('--stop-step', type=int, default=0,
                    help='stop after this step (the schedule still spans --steps); reproduces a '
                    'run that --time-limit ended')
    ap.add_argument('--type-weights', default='',
                    help='training mix of question types, e.g. caption=2,shape=2,text=0.5 '
                    '(others 1; default: uniform)')
    ap.add_argument('--proj-probe', type=float, default=0,
                    help='weight of a shape probe on the projector output (0: none)')
    ap.add_argument('--probe-warmup', type=int, default=0,
                    help='steps in which the probes learn on detached features')
    ap.add_argument('--init', help='continue training from this model directory')
    ap.add_argument('--first-item', type=int, default=0,
                    help='item seed of the first training sample (continuing: past the last run)')
    ap.add_argument('--aux-weight', type=float, default=1.0,
                    help='weight of the auxiliary per-patch probe loss on the CLIP features')
    ap.add_argument('--q-per-image', default='',
                    help='several questions about each picture, each its own single-turn row '
                    'sharing one CLIP forward: comma-separated types per picture, e.g. '
                    'caption,color,shape,where,count,exists,where,exists (--batch then counts '
                    'pictures; empty: one item per row, as before)')
    ap.add_argument('--exists-hard', type=float, default=0,
                    help='with --q-per-image: probability that an exists question is replaced by '
                    'a balanced yes/no binding question about the same picture (training only; '
                    'the evaluation keeps shapes_world.question())')
    ap.add_argument('--colour-key-q', type=int, default=0,
                    help='with --q-per-image: training-only questions per picture that look an '
                    'object up by its colour ("What shape is the red one?")')
    ap.add_argument('--text-per-image', type=int, default=1,
                    help='with --q-per-image: text-only rows per picture')
    ap.add_argument('--llm', default='',
                    help='LLM sizes hidden,intermediate,layers,heads,kv_heads (default '
                    f'{LLM_HIDDEN},{LLM_INTERMEDIATE},{LLM_LAYERS},{LLM_HEADS},{LLM_KV_HEADS})')
    ap.add_argument('--log-every', type=int, default=25)
    ap.add_argument('--time-limit', type=float, default=0,
                    help='stop after this many minutes (0: run all steps)')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.llm:
        LLM_HIDDEN, LLM_INTERMEDIATE, LLM_LAYERS, LLM_HEADS, LLM_KV_HEADS = map(
            int, args.llm.split(','))
    qpi = args.q_per_image.split(',') if args.q_per_image else []
    for q in qpi:
        if q not in W.QTYPES or q == 'text':
            ap.error(f'--q-per-image: bad type {q!r}')
    torch.manual_seed(args.seed)
    orig = MF.Orig(args.orig_dir)
    os.makedirs(args.out, exist_ok=True)
    tok_path = os.path.join(args.out, 'tokenizer.model')
    train_tokenizer(tok_path)
    write_tokenizer_files(args.out)
    tok = orig.tok.InternLMXComposer2Tokenizer.from_pretrained(args.out)
    log(f'tokenizer: {tok.vocab_size} pieces')

    work = tempfile.mkdtemp(prefix='shapes-train-')
    init_state = None
    if args.init:  # continue from a saved model (bf16 weights, fresh optimizer)
        from safetensors.torch import load_file
        init_state = load_file(os.path.join(args.init, 'model.safetensors'))
        log(f'continuing from {args.init}')
    model = build(orig, tok.vocab_size, args.seed, work, args.plora_r, state=init_state)
    model.train()
    model.tokenizer = tok
    n_par = sum(p.numel() for p in model.parameters())
    log(f'model: {n_par / 1e6:.2f} M parameters')
    lay = Layout(model, tok)

    # The training layout equals what interleav_wrap_chat builds (checked on a few items).
    with torch.no_grad():
        for s in range(5):
            it = W.item(s, 'color')
            px = pixels_tensor(W.render(it['scene']))
            E, M, T, _, _ = make_batch(model, lay, [it], [px])
            ie = model.encode_img(px[None])
            ref, rm = model.interleav_wrap_chat(tok, '<ImageHere>' + it['question'], ie, [], '')
            n = ref['inputs_embeds'].shape[1]
            if not torch.equal(ref['inputs_embeds'][0], E[0, :n]) or not torch.equal(
                    rm[0], M[0, :n]):
                raise RuntimeError('training layout differs from interleav_wrap_chat')

    torch.manual_seed(args.seed + 7)
    probe_shape = torch.nn.Linear(VIT_HIDDEN, 1 + len(W.SHAPES))
    probe_colour = torch.nn.Linear(VIT_HIDDEN, 1 + len(W.COLOURS))
    probes = [probe_shape, probe_colour]
    if args.cell_probe:
        probe_cell = torch.nn.Linear(VIT_HIDDEN, 9)
        probes.append(probe_cell)
    if args.proj_probe > 0:
        probe_proj = torch.nn.Linear(LLM_HIDDEN, 1 + len(W.SHAPES))
        probes.append(probe_proj)
    params = list(model.named_parameters()) + [
        (f'probe{i}.' + n, p) for i, pr in enumerate(probes) for n, p in pr.named_parameters()]
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01},
                             {'params': no_decay, 'weight_decay': 0.0}], lr=args.lr,
                            betas=(0.9, 0.98))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    # --type-weights: the training mix of question types (default: each type equally often, as
    # the item's own draw gives); drawn per item from its seed, so runs stay deterministic
    tw = dict(t.split('=') for t in args.type_weights.split(',')) if args.type_weights else {}
    weights = [float(tw.get(q, 1.0)) for q in W.QTYPES]

    def pick_type(item_seed):
        if not tw:
            return None
        r = W.Rng(item_seed ^ 0x5DEECE66D).next() / 2.0**64 * sum(weights)
        for q, w in zip(W.QTYPES, weights):
            if r < w:
                return q
            r -= w
        return W.QTYPES[-1]

    t0 = time.time()
    model.train()
    seed = args.first_item
    ema = None
    history = []
    for step in range(args.steps):
        items, images = [], []
        if qpi:  # --q-per-image: each picture asked several questions (distinct question
            # streams of one scene; question seeds far below the held-out range)
            for _ in range(args.batch):
                sc = W.scene(seed)
                for j, qt in enumerate(qpi):
                    t, q, a, _ = W.question(seed * 64 + j + 1, sc, qt)
                    if t == 'exists' and args.exists_hard > 0:
                        r = W.Rng((seed * 64 + j + 1) ^ 0xE715)
                        if r.next() / 2.0**64 < args.exists_hard:
                            q, a = hard_exists(r, sc)
                    items.append(dict(seed=seed, scene=sc, qtype=t, question=q, answer=a,
                                      image=True, img_idx=len(images)))
                for j in range(args.colour_key_q):  # training only: colour -> shape lookups
                    qa = colour_key_question(W.Rng((seed * 64 + 48 + j) ^ 0xC01), sc)
                    if qa:
                        items.append(dict(seed=seed, scene=sc, qtype='shape', question=qa[0],
                                          answer=qa[1], image=True, img_idx=len(images)))
                for j in range(args.text_per_image):
                    items.append(W.item(seed * 64 + 32 + j, 'text'))
                images.append(pixels_tensor(W.render(sc)))
                seed += 1
        else:
            for _ in range(args.batch):
                it = W.item(seed, pick_type(seed))
                seed += 1
                items.append(it)
                if it['image']:
                    images.append(pixels_tensor(W.render(it['scene'])))
        for g in opt.param_groups:
            g['lr'] = lr_at(step)
        if qpi:
            # one CLIP forward; the rows in three groups of similar length (captions, other
            # image questions, text) so that little is padding. The loss is the token mean over
            # all groups, the same as one padded batch gives (causal attention, right padding).
            vit_out = model.vit(torch.stack(images))
            img_rows = model.vision_proj(vit_out)
            groups = [[it for it in items if it['qtype'] == 'caption'],
                      [it for it in items if it['image'] and it['qtype'] != 'caption'],
                      [it for it in items if not it['image']]]
            lm_sum, n_tok = 0, 0
            for g in groups:
                if not g:
                    continue
                E, M, T, _, _ = make_batch(model, lay, g, images, img_rows, vit_out)
                o = model(inputs_embeds=E, im_mask=M, labels=T, use_cache=False,
                          return_dict=True)
                n = int((T[:, 1:] != -100).sum())
                lm_sum = lm_sum + o.loss * n
                n_tok += n
            loss = lm_sum / n_tok
        else:
            E, M, T, vit_out, img_rows = make_batch(model, lay, items, images)
            out = model(inputs_embeds=E, im_mask=M, labels=T, use_cache=False,
                        return_dict=True)
            loss = out.loss
        lm_loss = loss.item()
        if args.aux_weight > 0 and vit_out is not None:
            # Auxiliary probe on the CLIP features (a training aid, not part of the model): the
            # shape and colour of the object in each patch's cell. It gives the from-scratch
            # vision tower a dense signal; the language-model loss alone reaches it slowly.
            ts, tc = patch_targets(items)
            feats = vit_out
            if step < args.probe_warmup:  # fresh probes learn first, the model is left alone
                feats, img_rows = feats.detach(), img_rows.detach()
            aux = (F.cross_entropy(probe_shape(feats).flatten(0, 1), ts.flatten()) +
                   F.cross_entropy(probe_colour(feats).flatten(0, 1), tc.flatten()))
            if args.proj_probe > 0:  # the shape again, read from the projector's output as the
                # first RMSNorm sees it
                rows = img_rows * torch.rsqrt(img_rows.pow(2).mean(-1, keepdim=True) + 1e-5)
                aux = aux + args.proj_probe * F.cross_entropy(
                    probe_proj(rows).flatten(0, 1), ts.flatten())
            if args.cell_probe:
                cells = CELLS.repeat(feats.shape[0])
                aux = aux + F.cross_entropy(probe_cell(feats).flatten(0, 1), cells)
            loss = loss + args.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = lm_loss if ema is None else 0.95 * ema + 0.05 * lm_loss
        el = time.time() - t0
        if step % args.log_every == 0:
            log(f'step {step} loss {ema:.4f} lr {lr_at(step):.2e} {el:.0f}s' +
                (f' aux {aux.item():.3f}' if args.aux_weight > 0 and vit_out is not None else ''))
        if (step + 1) % args.eval_every == 0:
            acc = evaluate(model, tok, args.eval_per_type)
            history.append(dict(step=step + 1, seconds=round(el), loss=ema, acc=acc))
            log(f'step {step + 1} held-out ({args.eval_per_type}/type): {fmt_acc(acc)}')
            save_model(model, model.config, tok_path, args.out,
                       dict(step=step + 1, partial=True, history=history))
        if args.stop_step and step + 1 >= args.stop_step:
            log(f'stopping at step {step + 1} (--stop-step)')
            break
        if args.time_limit and el > args.time_limit * 60:
            log(f'time limit reached at step {step + 1}')
            break
    train_s = time.time() - t0
    log(f'trained {step + 1} steps ({seed} items) in {train_s:.0f}s')

    # Final: round to bf16 (what is committed), reload into a fresh original model, evaluate.
    sd = checkpoint_state(model)
    final = build(orig, tok.vocab_size, args.seed, work, args.plora_r, state=sd).eval()
    final.tokenizer = tok
    acc = evaluate(final, tok, args.final_per_type)
    log(f'final held-out ({args.final_per_type}/type, bf16 weights): {fmt_acc(acc)}')
    meta = dict(steps=step + 1, items=seed - args.first_item, first_item=args.first_item,
                init=args.init, batch=args.batch, lr=args.lr, seed=args.seed,
                aux_weight=args.aux_weight, cell_probe=args.cell_probe,
                type_weights=args.type_weights, proj_probe=args.proj_probe,
                probe_warmup=args.probe_warmup, q_per_image=args.q_per_image,
                text_per_image=args.text_per_image, exists_hard=args.exists_hard,
                colour_key_q=args.colour_key_q,
                warmup=args.warmup, steps_scheduled=args.steps,
                threads=args.threads, train_seconds=round(train_s), plora_r=args.plora_r,
                final_acc=acc, final_per_type=args.final_per_type, held_out_seed=HELD_OUT_SEED,
                history=history, torch=torch.__version__)
    save_model(final, final.config, tok_path, args.out, meta)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
