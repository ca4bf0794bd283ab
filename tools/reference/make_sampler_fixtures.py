#!/usr/bin/env python3
"""Sampling distributions from Hugging Face's own logits processors, for test_sampler.

For random logits over a 200-token vocabulary, applies transformers' processors in the order
generate() builds them (RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor,
MinNewTokensLengthLogitsProcessor, then the warpers Temperature, TopK, TopP) and writes the
distribution sampling draws from (softmax of the processed scores) and greedy's argmax (after the
processors, before the warpers), per case, to tests/fixtures/sampler/hf_processors.json.
Only combinations whose order xcpipe shares are written: logit_bias is applied before the
repetition penalty in xcpipe (as vLLM does), after it in HF, so the bias cases have no penalty.

usage: /work/.venv-ref/bin/python tools/reference/make_sampler_fixtures.py [--out DIR]
"""
import argparse
import json
import os

import torch
import transformers
from transformers.generation.logits_process import (
    LogitsProcessorList, MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

V = 200
CASES = [
    # name, repetition_penalty, temperature, top_k, top_p, min_new_tokens, bias {id: b}
    ("chat_defaults", 1.005, 1.0, 50, 0.8, 0, {}),
    ("penalty_1.3_t0.7_k20_p0.9", 1.3, 0.7, 20, 0.9, 0, {}),
    ("penalty_2_t1.5_p0.95", 2.0, 1.5, 0, 0.95, 0, {}),
    ("min_new_tokens_5", 1.1, 1.3, 0, 0.97, 5, {}),
    ("top_k_3", 1.0, 1.0, 3, 1.0, 0, {}),
    ("bias", 1.0, 0.9, 0, 0.9, 0, {7: 5.0, 9: -100.0, 150: 2.5}),
]
PROMPT = [1, 2, 3, 40, 41, 17, 17, 199]
GENERATED = [40, 55, 3]
EOS = [2, 3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='tests/fixtures/sampler')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(20261206)
    cases = []
    for name, rep, temp, k, p, mnt, bias in CASES:
        logits = (torch.randn(V, generator=g) * 2.5).float()
        logits[2] = logits.max() + 0.5  # EOS likely, so that min_new_tokens matters
        ids = torch.tensor([PROMPT + GENERATED])
        procs = LogitsProcessorList()
        if rep != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(rep))
        if bias:
            procs.append(SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()}))
        if mnt:
            procs.append(MinNewTokensLengthLogitsProcessor(len(PROMPT), mnt, EOS))
        warpers = LogitsProcessorList()
        if temp != 1.0:
            warpers.append(TemperatureLogitsWarper(temp))
        if k:
            warpers.append(TopKLogitsWarper(k))
        if p < 1.0:
            warpers.append(TopPLogitsWarper(p))
        scores = procs(ids, logits[None].clone())
        greedy = int(scores[0].argmax())
        final = warpers(ids, scores.clone())
        prob = torch.softmax(final[0].double(), -1)
        cases.append(dict(name=name, repetition_penalty=rep, temperature=temp, top_k=k,
                          top_p=p, min_new_tokens=mnt, eos=EOS,
                          logit_bias={str(t): b for t, b in bias.items()},
                          prompt=PROMPT, generated=GENERATED, logits=logits.tolist(),
                          greedy=greedy, prob=prob.tolist()))
    out = dict(generated_by='tools/reference/make_sampler_fixtures.py',
               versions=dict(torch=torch.__version__, transformers=transformers.__version__),
               vocab=V, cases=cases)
    path = os.path.join(args.out, 'hf_processors.json')
    with open(path, 'w') as f:
        json.dump(out, f)
        f.write('\n')
    print(f'{len(cases)} cases -> {path}')


if __name__ == '__main__':
    main()
