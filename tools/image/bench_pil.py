#!/usr/bin/python3
"""PIL + numpy baseline for `xcpipe bench preprocess`: the reference preprocessing
(Image.open + convert('RGB') + resize((S, S), BICUBIC) + ToTensor/Normalize done in numpy float32,
CHW) timed the way the C side is timed: median of --runs runs after warm-up, on bytes already in
memory. Prints one line "pil decode_ms D resize_ms R normalize_ms N total_ms T" and writes the
resized uint8 RGB (S, S, 3) to --out so the caller can check the C output is identical."""
import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


def decode(data):
    return Image.open(io.BytesIO(data)).convert("RGB")


def resize(im, s):
    return im.resize((s, s), Image.BICUBIC)


def normalize(im):
    x = np.asarray(im, dtype=np.float32) / np.float32(255)
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", required=True)
    ap.add_argument("--size", type=int, default=490)
    ap.add_argument("--runs", type=int, default=31)
    ap.add_argument("--out", help="write the resized uint8 RGB here")
    a = ap.parse_args()
    with open(a.image, "rb") as f:
        data = f.read()
    total, dec, rs, norm = [], [], [], []
    for r in range(-2, a.runs):  # whole path, two warm-up runs
        t0 = time.perf_counter()
        normalize(resize(decode(data), a.size))
        t1 = time.perf_counter()
        if r >= 0:
            total.append((t1 - t0) * 1e3)
    for r in range(-1, a.runs):  # each step alone
        t0 = time.perf_counter()
        im = decode(data)
        t1 = time.perf_counter()
        small = resize(im, a.size)
        t2 = time.perf_counter()
        normalize(small)
        t3 = time.perf_counter()
        if r >= 0:
            dec.append((t1 - t0) * 1e3)
            rs.append((t2 - t1) * 1e3)
            norm.append((t3 - t2) * 1e3)
    if a.out:
        with open(a.out, "wb") as f:
            f.write(small.tobytes())
    med = statistics.median
    print("pil decode_ms %.3f resize_ms %.3f normalize_ms %.3f total_ms %.3f"
          % (med(dec), med(rs), med(norm), med(total)))


if __name__ == "__main__":
    main()
