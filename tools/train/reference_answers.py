#!/usr/bin/env python3
"""Greedy answers of the ORIGINAL XComposer2 code on the committed shapes model, as fixture data.

Loads models/shapes (config.json, bf16 model.safetensors, tokenizer) into the original
InternLMXComposer2ForCausalLM (patched to the small sizes as tools/train/train_shapes.py does),
asks the first N held-out questions exactly as `xcpipe eval shapes` asks them (item seeds from
1e9, question types in turn: caption, color, shape, where, count, exists, text; no meta
instruction; the picture before the question) with chat(do_sample=False, max_new_tokens=48,
repetition_penalty=1.0), and writes one JSON line per question (seed, type, question, answer).

`xcpipe eval shapes --model models/shapes --count N --expect FILE` must give identical answers
(tests/integration/eval_shapes.sh does, through 1, 2 and 3 stages and under MPI).

  /work/.venv-ref/bin/python tools/train/reference_answers.py --orig-dir /work/ixc2-orig \
      --model models/shapes --count 50 --out tests/fixtures/shapes/reference_answers.jsonl
"""

import argparse
import json
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'reference'))
import shapes_world as W  # noqa: E402
import make_fixtures as MF  # noqa: E402
import train_shapes as T  # noqa: E402


def load(orig, model_dir, work):
    from safetensors.torch import load_file
    state = load_file(os.path.join(model_dir, 'model.safetensors'))
    with open(os.path.join(model_dir, 'config.json')) as f:
        cfg = json.load(f)
    rank = state['model.layers.0.attention.wqkv.Plora_A.weight'].shape[0]
    if cfg['hidden_size'] != T.LLM_HIDDEN or cfg['img_size'] != W.IMG:
        sys.exit('reference_answers: the model does not have the shapes sizes of train_shapes.py')
    model = T.build(orig, cfg['vocab_size'], 0, work, rank, state=state).eval()
    tok = orig.tok.InternLMXComposer2Tokenizer.from_pretrained(model_dir)
    model.tokenizer = tok
    return model, tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--orig-dir', required=True)
    ap.add_argument('--model', default='models/shapes')
    ap.add_argument('--count', type=int, default=50)
    ap.add_argument('--seed', type=int, default=T.HELD_OUT_SEED)
    ap.add_argument('--out', default='tests/fixtures/shapes/reference_answers.jsonl')
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    orig = MF.Orig(args.orig_dir)
    with tempfile.TemporaryDirectory() as work:
        model, tok = load(orig, args.model, work)
        right = 0
        with open(args.out, 'w') as f:
            for i in range(args.count):
                it = W.item(args.seed + i, W.QTYPES[i % len(W.QTYPES)])
                ans = T.greedy_answer(model, tok, it)
                ok = T.score(it, ans)
                right += ok
                f.write(json.dumps(dict(seed=it['seed'], type=it['qtype'],
                                        question=it['question'], expected=it['answer'],
                                        answer=ans, correct=bool(ok))) + '\n')
    print(f'{args.count} answers -> {args.out} ({right} correct)')


if __name__ == '__main__':
    main()
