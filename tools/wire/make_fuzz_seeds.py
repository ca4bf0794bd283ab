#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_wire.c: valid xc.v1 headers, encoded by hand from
the protobuf wire format (independent of protoc-c), each behind the harness's 9-byte prefix
(decoder/frame-count byte, two little-endian u32 frame lengths).
Usage: tools/wire/make_fuzz_seeds.py [OUT_DIR]   (default tests/fuzz/corpus/wire)"""
import os
import struct
import sys


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def vfield(num, v):  # varint field
    return varint(num << 3) + varint(v)


def lfield(num, payload):  # length-delimited field
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def f32field(num, x):
    return varint(num << 3 | 5) + struct.pack("<f", x)


def packed(num, vals):
    return lfield(num, b"".join(varint(v) for v in vals))


def envelope(body_num, body):
    return vfield(1, 1) + lfield(body_num, body)


def control(kind_num, msg):
    return envelope(2, lfield(kind_num, msg))


def prefix(which, n_frames, l0=0, l1=0):
    return bytes([which * 3 + n_frames]) + struct.pack("<II", l0, l1)


def s(x):
    return x.encode()


seeds = {}
seeds["heartbeat"] = prefix(1, 0) + control(4, vfield(1, 5) + vfield(2, 123456789) + vfield(3, 2))
seeds["register"] = prefix(1, 0) + control(
    1, lfield(1, s("w-0")) + vfield(2, 2) + vfield(3, 80 << 30) + vfield(4, 1 << 40)
    + lfield(5, s("tcp://10.0.0.2:5600")) + lfield(6, s("NVIDIA H100")))
seeds["assign"] = prefix(1, 0) + control(
    2, vfield(1, 2) + vfield(3, 1) + vfield(4, 2) + vfield(5, 16) + vfield(6, 32) + vfield(7, 32)
    + lfield(8, s("/models/xc2")) + lfield(9, s("ipc:///tmp/xc-1")) + vfield(10, 900)
    + vfield(11, 16))
seeds["ready"] = prefix(1, 0) + control(3, vfield(1, 1) + vfield(2, 512))
seeds["drain"] = prefix(1, 0) + control(5, vfield(1, 30000))
seeds["error"] = prefix(1, 0) + control(
    6, vfield(1, (1 << 64) - 6) + lfield(2, s("device lost")) + vfield(3, 1) + vfield(4, 7))
seeds["shutdown"] = prefix(1, 0) + control(7, lfield(1, s("scale down")))

sampling = (vfield(1, 0) + f32field(2, 0.7) + vfield(3, 50) + f32field(4, 0.9)
            + f32field(5, 1.05) + vfield(6, 42) + vfield(7, 64) + packed(8, [2, 92542]))
seq_a = (vfield(1, 7) + vfield(2, 0) + vfield(3, 6) + packed(4, [3, 8])
         + lfield(5, vfield(1, 1) + vfield(2, 3)) + lfield(5, vfield(1, 4) + vfield(2, 5))
         + lfield(6, sampling))
seq_b = vfield(1, 9) + vfield(2, 10) + vfield(3, 2) + packed(4, [1, 2, 5])
tensor_ids = vfield(1, 4) + vfield(2, 8) + vfield(3, 1)  # I32 [8, 1]
tensor_img = vfield(1, 1) + vfield(2, 3) + vfield(3, 16)  # F32 [3, 16]
fwd0 = (vfield(1, 77) + vfield(2, 4) + lfield(3, seq_a) + lfield(3, seq_b)
        + packed(4, [100, 101]) + lfield(5, tensor_ids) + lfield(6, tensor_img))
seeds["forward_stage0"] = prefix(2, 2, 32, 192) + envelope(3, fwd0)
tensor_hidden = vfield(1, 2) + vfield(2, 2) + vfield(3, 4096)  # BF16 [2, 4096]
fwd1 = vfield(1, 78) + vfield(2, 16) + lfield(3, vfield(1, 9) + vfield(2, 12) + vfield(3, 2)
                                               + packed(4, [1])) + lfield(5, tensor_hidden)
seeds["forward_hidden"] = prefix(0, 1, 2 * 4096 * 2) + envelope(3, fwd1)
seeds["result"] = prefix(3, 0) + envelope(4, vfield(1, 77) + packed(2, [7, 9]) + packed(3, [13, 2]))

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "tests", "fuzz", "corpus", "wire")
os.makedirs(out, exist_ok=True)
for name, data in sorted(seeds.items()):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
