#!/usr/bin/python3
"""Makes the image-preprocessing fixtures in tests/fixtures/image/ with PIL (and torchvision).

Run with Debian's /usr/bin/python3 (python3-pil 9.4, python3-torchvision): the C decoder and
resizer must reproduce exactly what these libraries produce.

  src/<name>.<ext>       synthetic source images: JPEG, PNG and WebP in every mode we accept
  dec/<name>.png         Image.open(src).convert('RGB') (8-bit RGB PNG)
  rs/<name>_<W>x<H>.png  convert('RGB').resize((W, H), Image.BICUBIC)
  tensor/<name>_<S>.f32  torchvision Resize((S, S), BICUBIC) + ToTensor + Normalize(CLIP), float32
                         little-endian, (3, S, S)
  manifest.txt           one line per fixture (see the header of that file)

It also writes small seed corpora for the libFuzzer harnesses to tests/fuzz/corpus/image_*/.

The sources are deterministic (fixed seeds), so rerunning reproduces the same files.
"""
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "image")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

rng = np.random.default_rng(20240611)


# ---- synthetic content -------------------------------------------------------------------------

def gradient(w, h, phase=0.0):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + 2 * y) / 9.0 + phase)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def noise(w, h, c=3):
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def photo(w, h):
    """Smooth blobs plus mild noise: compresses like a photograph, not like white noise."""
    base = gradient(w, h, phase=1.3).astype(np.float64)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.4) * max(w, h)
        col = rng.uniform(0, 255, 3)
        m = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        base = base * (1 - m) + col * m
    base += rng.normal(0, 4, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def text_like(w, h, mode="RGB"):
    """Dark strokes, boxes and bitmap-font text on a light background: sharp edges make the
    bicubic filter overshoot, which exercises the clipping."""
    im = Image.new("RGB", (w, h), (245, 242, 230))
    d = ImageDraw.Draw(im)
    for i in range(0, h, 12):
        d.text((3 + (i * 7) % 11, i), "The quick brown fox 0123456789 jumps", fill=(20, 20, 20))
    for _ in range(8):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        d.rectangle([x0, y0, x0 + int(rng.integers(2, 30)), y0 + int(rng.integers(2, 30))],
                    outline=tuple(int(v) for v in rng.integers(0, 256, 3)), width=2)
        d.line([int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(0, w)),
                int(rng.integers(0, h))], fill=(200, 30, 30), width=1)
    return np.asarray(im.convert(mode))


def checker(w, h, cell=1):
    y, x = np.mgrid[0:h, 0:w]
    return (((x // cell + y // cell) % 2) * 255).astype(np.uint8)


def alpha_ramp(w, h):
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 7 + y * 3) % 256).astype(np.uint8)


# ---- a small PNG writer for what PIL cannot write (16-bit colour, 2/4-bit gray, Adam7) --------

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def _chunk(t, data):
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def _pack_rows(a, depth):
    """a: (h, w, c) integer samples -> list of packed row bytes (no filter byte)."""
    rows = []
    for r in a:
        flat = r.reshape(-1)
        if depth == 16:
            rows.append(flat.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(flat.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            pad = (-len(flat)) % per
            v = np.concatenate([flat, np.zeros(pad, flat.dtype)]).reshape(-1, per)
            shifts = np.array([8 - depth * (i + 1) for i in range(per)])
            rows.append((v << shifts).sum(1).astype(np.uint8).tobytes())
    return rows


def write_png(path, a, depth, color_type, plte=None, trns=None, interlace=False):
    h, w = a.shape[:2]
    if a.ndim == 2:
        a = a[..., None]
    raw = b""
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            sub = a[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for i, row in enumerate(_pack_rows(sub, depth)):
                raw += bytes([i % 2]) + _sub_filter(row, _bpp(a.shape[2], depth), i % 2)
    else:
        for i, row in enumerate(_pack_rows(a, depth)):
            ftype = i % 2  # alternate None and Sub filters
            raw += bytes([ftype]) + _sub_filter(row, _bpp(a.shape[2], depth), ftype)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if plte is not None:
        data += _chunk(b"PLTE", bytes(np.asarray(plte, np.uint8).reshape(-1)))
    if trns is not None:
        data += _chunk(b"tRNS", trns)
    data += _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def _bpp(channels, depth):
    return max(1, channels * depth // 8)


def _sub_filter(row, bpp, ftype):
    if ftype == 0:
        return row
    out = bytearray(row)
    for i in range(len(row) - 1, bpp - 1, -1):
        out[i] = (row[i] - row[i - bpp]) & 0xFF
    return bytes(out)


# ---- the source set ----------------------------------------------------------------------------

def save_pil(path, im, **kw):
    im.save(path, **kw)


def exif_orientation(v):
    e = Image.Exif()
    e[0x0112] = v
    return e.tobytes()


def sources():
    """(name, ext, writer) for every source image; writer(path) creates the file."""
    S = []

    def pil(name, ext, make, **kw):
        S.append((name, ext, lambda p: save_pil(p, make(), **kw)))

    def raw(name, a, depth, ct, **kw):
        S.append((name, "png", lambda p: write_png(p, a, depth, ct, **kw)))

    # PNG written by PIL
    pil("png_rgb_gradient_320x240", "png", lambda: Image.fromarray(gradient(320, 240)))
    pil("png_rgb_noise_64x48", "png", lambda: Image.fromarray(noise(64, 48)))
    pil("png_rgba_text_300x200", "png", lambda: Image.fromarray(
        np.dstack([text_like(300, 200), alpha_ramp(300, 200)]), "RGBA"))
    pil("png_l_checker_97x61", "png", lambda: Image.fromarray(checker(97, 61, 2), "L"))
    pil("png_la_photo_150x400", "png", lambda: Image.fromarray(
        np.dstack([photo(150, 400)[..., 1], alpha_ramp(150, 400)]), "LA"))
    pil("png_p_adaptive_256x256", "png",
        lambda: Image.fromarray(photo(256, 256)).quantize(colors=200))
    S.append(("png_p_trns_index_120x90", "png", _p_single_trns))
    S.append(("png_p_trns_bytes_90x120", "png", _p_bytes_trns))
    pil("png_i16_gray_200x150", "png", lambda: Image.fromarray(
        (gradient(200, 150)[..., 0].astype(np.uint16) * 2 + 1), "I;16"))
    pil("png_1bit_129x65", "png", lambda: Image.fromarray(checker(129, 65, 3)).convert("1"))
    pil("png_p4bit_80x60", "png",
        lambda: Image.fromarray(text_like(80, 60)).quantize(colors=16), bits=4)
    pil("png_rgb_tiny_1x1", "png", lambda: Image.new("RGB", (1, 1), (200, 17, 99)))
    pil("png_rgba_tiny_3x7", "png", lambda: Image.fromarray(noise(3, 7, 4), "RGBA"))
    pil("png_rgb_wide_600x20", "png", lambda: Image.fromarray(text_like(600, 20)))
    pil("png_l_tall_1x500", "png", lambda: Image.fromarray(gradient(1, 500)[..., 1], "L"))
    S.append(("png_rgb_trns_color_64x64", "png", _rgb_trns))
    pil("png_rgb_exact_224x224", "png", lambda: Image.fromarray(photo(224, 224)))
    pil("png_rgb_vonly_224x300", "png", lambda: Image.fromarray(text_like(224, 300)))
    pil("png_rgb_honly_300x224", "png", lambda: Image.fromarray(gradient(300, 224, 0.5)))
    # PNG variants PIL does not write
    raw("png_rgb16_100x70", (gradient(100, 70).astype(np.uint16) * 257 +
                             rng.integers(0, 256, (70, 100, 3))), 16, 2)
    raw("png_rgba16_70x100", np.dstack([photo(70, 100).astype(np.uint16) * 256 + 200,
                                        alpha_ramp(70, 100).astype(np.uint16) * 250]), 16, 6)
    raw("png_la16_33x44", np.dstack([gradient(33, 44)[..., 2].astype(np.uint16) * 257,
                                     np.full((44, 33), 65535, np.uint16)]), 16, 4)
    raw("png_gray2bit_50x50", (gradient(50, 50)[..., 0] // 64), 2, 0)
    raw("png_gray4bit_61x23", (gradient(61, 23)[..., 2] // 16), 4, 0)
    raw("png_interlaced_rgb_150x100", text_like(150, 100), 8, 2, interlace=True)
    raw("png_interlaced_p2bit_45x37", rng.integers(0, 4, (37, 45)), 2, 3,
        plte=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 0]], interlace=True)
    raw("png_interlaced_l16_9x11", (gradient(9, 11)[..., 0].astype(np.uint16) * 3), 16, 0,
        interlace=True)
    raw("png_p_short_plte_40x30", rng.integers(0, 256, (30, 40)), 8, 3,
        plte=[[10, 20, 30], [200, 100, 50], [0, 255, 128], [90, 90, 255]])
    # JPEG
    pil("jpg_420_q90_640x480", "jpg", lambda: Image.fromarray(photo(640, 480)), quality=90)
    pil("jpg_444_333x250", "jpg", lambda: Image.fromarray(text_like(333, 250)), quality=85,
        subsampling=0)
    pil("jpg_422_250x333", "jpg", lambda: Image.fromarray(photo(250, 333)), quality=80,
        subsampling=1)
    pil("jpg_progressive_400x300", "jpg", lambda: Image.fromarray(photo(400, 300)),
        quality=75, progressive=True)
    pil("jpg_gray_257x129", "jpg", lambda: Image.fromarray(photo(257, 129)[..., 0], "L"),
        quality=88)
    pil("jpg_cmyk_120x80", "jpg", lambda: Image.fromarray(photo(120, 80)).convert("CMYK"),
        quality=90)
    pil("jpg_exif_rot6_160x90", "jpg", lambda: Image.fromarray(text_like(160, 90)),
        quality=90, exif=exif_orientation(6))
    pil("jpg_tiny_3x7", "jpg", lambda: Image.fromarray(noise(3, 7)), quality=95)
    pil("jpg_optimized_q50_511x97", "jpg", lambda: Image.fromarray(photo(511, 97)),
        quality=50, optimize=True)
    # WebP
    pil("webp_lossy_300x200", "webp", lambda: Image.fromarray(photo(300, 200)), quality=80)
    pil("webp_lossless_150x150", "webp", lambda: Image.fromarray(text_like(150, 150)),
        lossless=True)
    pil("webp_lossy_alpha_200x120", "webp", lambda: Image.fromarray(
        np.dstack([photo(200, 120), alpha_ramp(200, 120)]), "RGBA"), quality=70)
    pil("webp_lossless_alpha_99x77", "webp", lambda: Image.fromarray(
        np.dstack([text_like(99, 77), alpha_ramp(99, 77)]), "RGBA"), lossless=True)
    S.append(("webp_anim_64x48", "webp", _anim_webp))
    pil("webp_tiny_1x1", "webp", lambda: Image.new("RGB", (1, 1), (3, 250, 77)), quality=90)
    # GIF (issue 14; giflib in C) and BMP (stb_image in C): their own random generator, so the
    # sources above keep their bytes
    g = np.random.default_rng(20261206)

    def gnoise(w, h):
        return g.integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    def smooth(w, h):
        return np.clip(gradient(w, h, phase=0.7).astype(np.int32) +
                       g.integers(-6, 7, size=(h, w, 3)), 0, 255).astype(np.uint8)

    pil("gif_p_gradient_120x90", "gif", lambda: Image.fromarray(smooth(120, 90)).quantize(
        colors=200), interlace=False)
    pil("gif_interlaced_101x77", "gif", lambda: Image.fromarray(smooth(101, 77)).quantize(
        colors=64), interlace=True)
    pil("gif_l_gray_64x48", "gif", lambda: Image.fromarray(smooth(64, 48)[..., 1], "L"))
    pil("gif_p_trns_80x60", "gif", lambda: Image.fromarray(gnoise(80, 60)).quantize(colors=16),
        transparency=3)
    pil("gif_tiny_1x1", "gif", lambda: Image.new("RGB", (1, 1), (250, 3, 77)).quantize(colors=2))
    S.append(("gif_anim_64x48", "gif", lambda p: Image.fromarray(smooth(64, 48)).quantize(
        colors=32).save(p, save_all=True, append_images=[
            Image.fromarray(gnoise(64, 48)).quantize(colors=32)], duration=50, loop=0)))
    S.append(("gif_offset_frame_40x30", "gif", _gif_offset_frame))
    pil("bmp_rgb_150x100", "bmp", lambda: Image.fromarray(smooth(150, 100)))
    pil("bmp_rgb_odd_33x17", "bmp", lambda: Image.fromarray(gnoise(33, 17)))
    pil("bmp_p_8bit_90x60", "bmp", lambda: Image.fromarray(smooth(90, 60)).quantize(colors=256))
    pil("bmp_l_70x50", "bmp", lambda: Image.fromarray(smooth(70, 50)[..., 0], "L"))
    pil("bmp_1bit_37x21", "bmp", lambda: Image.fromarray(gnoise(37, 21)[..., 0] > 127))
    pil("bmp_rgba_60x40", "bmp", lambda: Image.fromarray(np.dstack([smooth(60, 40),
                                                                      gnoise(60, 40)[..., 0]]),
                                                         "RGBA"))
    S.append(("bmp_p_4bit_topdown_45x31", "bmp", _bmp_4bit_topdown))
    return S


def _gif_offset_frame(path):
    """A GIF89a whose first frame (20x10 at (7, 11)) is smaller than the 40x30 screen, with a
    transparency index: PIL fills the rest of the screen with that index."""
    import io
    small = Image.fromarray(gradient(20, 10)).quantize(colors=8)
    buf = io.BytesIO()
    small.save(buf, "GIF", transparency=2)
    b = bytearray(buf.getvalue())
    assert b[:6] == b"GIF89a"
    b[6:10] = (40).to_bytes(2, "little") + (30).to_bytes(2, "little")  # logical screen
    i = 13 + (3 << ((b[10] & 7) + 1) if b[10] & 0x80 else 0)  # after the global color table
    while b[i] == 0x21:  # extensions: label, then sub-blocks up to a 0 length
        i += 2
        while b[i]:
            i += b[i] + 1
        i += 1
    assert b[i] == 0x2C
    b[i + 1:i + 5] = (7).to_bytes(2, "little") + (11).to_bytes(2, "little")
    open(path, "wb").write(bytes(b))


def _bmp_4bit_topdown(path):
    """A 4-bit palette BMP stored top-down (negative height), written by hand (PIL writes
    neither)."""
    w, h = 45, 31
    pal = [(i * 17, 255 - i * 13, (i * 53) % 256) for i in range(16)]
    idx = (np.add.outer(np.arange(h), np.arange(w)) % 16).astype(np.uint8)
    stride = ((w + 1) // 2 + 3) & ~3
    rows = b""
    for y in range(h):
        r = bytearray(stride)
        for x in range(w):
            r[x // 2] |= idx[y, x] << (4 if x % 2 == 0 else 0)
        rows += bytes(r)
    off = 14 + 40 + 16 * 4
    hdr = b"BM" + struct.pack("<IHHI", off + len(rows), 0, 0, off)
    dib = struct.pack("<IiiHHIIiiII", 40, w, -h, 1, 4, 0, len(rows), 2835, 2835, 16, 0)
    palb = b"".join(bytes((bb, gg, rr, 0)) for rr, gg, bb in pal)
    open(path, "wb").write(hdr + dib + palb + rows)


def _p_single_trns(path):
    im = Image.fromarray(photo(120, 90)).quantize(colors=64)
    im.save(path, transparency=5)


def _p_bytes_trns(path):
    im = Image.fromarray(text_like(90, 120)).quantize(colors=32)
    im.save(path, transparency=bytes((i * 8) % 256 for i in range(32)))


def _rgb_trns(path):
    im = Image.fromarray(checker(64, 64, 4)).convert("RGB")
    im.save(path, transparency=(255, 255, 255))


def _anim_webp(path):
    f0 = Image.fromarray(photo(64, 48))
    f1 = Image.fromarray(noise(64, 48))
    f0.save(path, save_all=True, append_images=[f1], duration=100, loop=0, quality=80)


# ---- fixtures ----------------------------------------------------------------------------------

def save_rgb_png(path, im):
    """Pixels only: convert() keeps info such as 'transparency', which would add a tRNS chunk
    that PNG readers may apply."""
    assert im.mode == "RGB"
    Image.frombytes("RGB", im.size, im.tobytes()).save(path, compress_level=9)


def fuzz_seeds():
    """A few tiny files per format, covering the decoder paths, as libFuzzer seeds."""
    base = os.path.join(ROOT, "tests", "fuzz", "corpus")
    seeds = {
        "image_jpeg": [
            ("baseline.jpg", lambda p: Image.fromarray(photo(16, 12)).save(p, quality=80)),
            ("progressive.jpg", lambda p: Image.fromarray(photo(17, 9)).save(
                p, quality=70, progressive=True)),
            ("gray.jpg", lambda p: Image.fromarray(photo(8, 8)[..., 0], "L").save(p)),
            ("cmyk.jpg", lambda p: Image.fromarray(photo(9, 5)).convert("CMYK").save(p)),
            ("444.jpg", lambda p: Image.fromarray(noise(10, 6)).save(p, subsampling=0)),
        ],
        "image_png": [
            ("rgb.png", lambda p: Image.fromarray(photo(12, 8)).save(p)),
            ("rgba.png", lambda p: Image.fromarray(noise(5, 4, 4), "RGBA").save(p)),
            ("p.png", lambda p: Image.fromarray(photo(9, 9)).quantize(8).save(
                p, transparency=2)),
            ("gray16.png", lambda p: Image.fromarray(
                gradient(7, 6)[..., 0].astype(np.uint16) * 3, "I;16").save(p)),
            ("interlaced.png", lambda p: write_png(p, text_like(11, 9), 8, 2, interlace=True)),
            ("la16.png", lambda p: write_png(p, np.dstack([gradient(6, 5)[..., 1].astype(
                np.uint16) * 257, np.full((5, 6), 9000, np.uint16)]), 16, 4)),
            ("gray2.png", lambda p: write_png(p, gradient(13, 3)[..., 0] // 64, 2, 0)),
        ],
        "image_webp": [
            ("lossy.webp", lambda p: Image.fromarray(photo(16, 12)).save(p, quality=60)),
            ("lossless.webp", lambda p: Image.fromarray(text_like(12, 10)).save(
                p, lossless=True)),
            ("alpha.webp", lambda p: Image.fromarray(noise(8, 8, 4), "RGBA").save(
                p, quality=50)),
            ("anim.webp", lambda p: Image.fromarray(photo(8, 6)).save(
                p, save_all=True, append_images=[Image.fromarray(noise(8, 6))], duration=50)),
        ],
    }
    for d, files in seeds.items():
        os.makedirs(os.path.join(base, d), exist_ok=True)
        for fn, make in files:
            make(os.path.join(base, d, fn))


def main():
    for d in ("src", "dec", "rs", "tensor"):
        os.makedirs(os.path.join(OUT, d), exist_ok=True)
    import torch
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    lines = [
        "# made by tools/image/make_fixtures.py with Pillow %s; do not edit" % Image.__version__,
        "# image  NAME SRC MODE W H DEC_PNG    (PIL Image.open(SRC).mode/size, convert('RGB'))",
        "# resize NAME W H OUT_PNG             (convert('RGB').resize((W, H), BICUBIC))",
        "# tensor NAME S OUT_F32               (torchvision Resize((S, S), BICUBIC), ToTensor, "
        "Normalize(CLIP))",
    ]
    srcs = sources()
    for idx, (name, ext, writer) in enumerate(srcs):
        src = os.path.join("src", "%s.%s" % (name, ext))
        writer(os.path.join(OUT, src))
        im = Image.open(os.path.join(OUT, src))
        mode, (w, h) = im.mode, im.size
        rgb = im.convert("RGB")
        dec = os.path.join("dec", name + ".png")
        save_rgb_png(os.path.join(OUT, dec), rgb)
        lines.append("image %s %s %s %d %d %s" % (name, src, mode, w, h, dec))
        sizes = [(224, 224), (37, 37)]
        if idx % 11 == 0:
            sizes.append((490, 490))
        if idx % 4 == 1:
            sizes.append((53, 29))
        if idx % 5 == 2:
            sizes.append((17, 300))
        for W, H in sizes:
            r = rgb.resize((W, H), Image.BICUBIC)
            out = os.path.join("rs", "%s_%dx%d.png" % (name, W, H))
            save_rgb_png(os.path.join(OUT, out), r)
            lines.append("resize %s %d %d %s" % (name, W, H, out))
        if idx % 7 == 3:
            for S in (37, 64):
                tf = T.Compose([T.Resize((S, S), interpolation=InterpolationMode.BICUBIC),
                                T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
                t = tf(rgb)
                assert t.dtype == torch.float32 and tuple(t.shape) == (3, S, S)
                # torchvision's Resize must be PIL's resize (what the C code reproduces).
                ref = np.asarray(rgb.resize((S, S), Image.BICUBIC))
                assert np.array_equal(np.asarray(T.Resize(
                    (S, S), interpolation=InterpolationMode.BICUBIC)(rgb)), ref)
                out = os.path.join("tensor", "%s_%d.f32" % (name, S))
                t.numpy().astype("<f4").tofile(os.path.join(OUT, out))
                lines.append("tensor %s %d %s" % (name, S, out))
    fuzz_seeds()
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(os.path.getsize(os.path.join(dp, fn))
                for dp, _, fns in os.walk(OUT) for fn in fns)
    print("%d sources, %d fixture lines, %.2f MB in %s" % (len(srcs), len(lines) - 4,
                                                          total / 1e6, OUT))


if __name__ == "__main__":
    sys.exit(main())
