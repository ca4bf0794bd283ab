"""The shapes world: deterministic scenes of coloured shapes, their pictures and questions.

This file is the specification that `cli/xc_shapes.c` implements a second time in C (for
`xcpipe eval shapes` and `scripts/demo`); `tests/unit/test_shapes.c` checks that both give the same
pixels, questions and answers for the same seeds (fixture `tests/fixtures/shapes/world.json`,
written by `python3 tools/train/shapes_world.py --fixture`).

Everything is integer arithmetic, so the two implementations agree bit for bit:
* PRNG: splitmix64; `rnd(n)` = next() % n.
* An item `seed` draws its scene from the stream seeded with 2*seed and its question from the
  stream seeded with 2*seed + 1 (mod 2^64).
* Pixels are tested at their centres in half-pixel units: pixel (x, y) is the point
  (2x + 1, 2y + 1); a shape has centre (cx2, cy2) and radius r2 in the same units. No
  anti-aliasing: a pixel is the shape's colour or the background's.
"""

import argparse
import json
import sys

import numpy as np

MASK64 = (1 << 64) - 1

IMG = 84  # pixels; 84 / 14 = 6 x 6 CLIP patches
CELL = IMG // 3  # a 3 x 3 grid of cells, 28 px = 2 x 2 patches each
SHAPES = ('circle', 'square', 'triangle', 'star')
COLOURS = ('red', 'green', 'blue', 'yellow', 'purple', 'orange')
RGB = ((215, 40, 40), (40, 170, 60), (45, 75, 215), (235, 215, 40), (140, 60, 190), (245, 135,
                                                                                      25))
POSITIONS = ('top left', 'top', 'top right', 'left', 'center', 'right', 'bottom left', 'bottom',
             'bottom right')
NUMBERS = ('zero', 'one', 'two', 'three')
CORNERS = ('zero', 'four', 'three', 'ten')  # per SHAPES
QTYPES = ('caption', 'color', 'shape', 'where', 'count', 'exists', 'text')
# A five-pointed star, pointing up, outer radius 1000, inner 400 (y grows downwards), rounded.
STAR = ((0, -1000), (235, -324), (951, -309), (380, 124), (588, 809), (0, 400), (-588, 809),
        (-380, 124), (-951, -309), (-235, -324))
NOISE = 20  # noisy backgrounds add rnd(2*NOISE+1) - NOISE per sample


class Rng:
    """splitmix64"""

    def __init__(self, seed):
        self.s = seed & MASK64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def rnd(self, n):
        return self.next() % n


def noise_draws(state, count, n):
    """The next `count` values of rnd(n) of a splitmix64 stream in `state`, vectorised (its k-th
    state is state + k * gamma)."""
    with np.errstate(over='ignore'):
        z = np.uint64(state) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(
            0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n)).astype(np.int64)


def _pick(rng, n, k):
    """k distinct values of 0..n-1 (a partial Fisher-Yates shuffle), in drawing order."""
    a = list(range(n))
    for i in range(k):
        j = i + rng.rnd(n - i)
        a[i], a[j] = a[j], a[i]
    return a[:k]


def scene(seed):
    """The scene of item `seed`: background, noise flag and 1-3 shapes (distinct kinds, distinct
    cells), sorted by cell (reading order)."""
    rng = Rng(2 * seed)
    level = 80 + rng.rnd(96)
    bg = tuple(level + rng.rnd(21) - 10 for _ in range(3))
    noisy = rng.rnd(2)
    n = 1 + rng.rnd(3)
    cells = _pick(rng, 9, n)
    kinds = _pick(rng, len(SHAPES), n)
    objs = []
    for i in range(n):
        colour = rng.rnd(len(COLOURS))
        r2 = 16 + rng.rnd(9)
        jx = rng.rnd(5) - 2
        jy = rng.rnd(5) - 2
        c = cells[i]
        objs.append(dict(cell=c, shape=kinds[i], color=colour, r2=r2,
                         cx2=(c % 3) * 2 * CELL + CELL + jx, cy2=(c // 3) * 2 * CELL + CELL + jy))
    objs.sort(key=lambda o: o['cell'])
    return dict(seed=seed, bg=bg, noisy=noisy, objects=objs, noise_state=rng.s)


def shape_mask(shape, r2, cx2, cy2):
    """(IMG, IMG) bool: the pixels whose centres lie in the shape."""
    y, x = np.mgrid[0:IMG, 0:IMG].astype(np.int64)
    dx = 2 * x + 1 - cx2
    dy = 2 * y + 1 - cy2
    if shape == 0:  # circle
        return dx * dx + dy * dy <= r2 * r2
    if shape == 1:  # square, half side 4/5 of the radius
        h = r2 * 4 // 5
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == 2:  # triangle pointing up: apex at -r2, base at +r2 with half width r2
        return (dy <= r2) & (2 * np.abs(dx) <= dy + r2)
    # star: even-odd crossing test against the polygon STAR * r2 / 1000, in exact integers
    px, py = dx * 1000, dy * 1000
    inside = np.zeros((IMG, IMG), bool)
    for i in range(len(STAR)):
        ax, ay = STAR[i][0] * r2, STAR[i][1] * r2
        bx, by = STAR[(i + 1) % len(STAR)][0] * r2, STAR[(i + 1) % len(STAR)][1] * r2
        straddle = (ay > py) != (by > py)
        lhs = (px - ax) * (by - ay)
        rhs = (py - ay) * (bx - ax)
        cross = (lhs < rhs) if by - ay > 0 else (lhs > rhs)
        inside ^= straddle & cross
    return inside


def render(sc):
    """(IMG, IMG, 3) uint8 RGB."""
    img = np.empty((IMG, IMG, 3), np.int64)
    img[:, :] = sc['bg']
    if sc['noisy']:
        img += noise_draws(sc['noise_state'], IMG * IMG * 3, 2 * NOISE + 1).reshape(IMG, IMG,
                                                                                   3) - NOISE
        np.clip(img, 0, 255, out=img)
    for o in sc['objects']:
        img[shape_mask(o['shape'], o['r2'], o['cx2'], o['cy2'])] = RGB[o['color']]
    return img.astype(np.uint8)


def _where(cell):
    """'at the top left', 'in the center', 'on the left'"""
    pos = POSITIONS[cell]
    return {'center': 'in', 'left': 'on', 'right': 'on'}.get(pos, 'at') + ' the ' + pos


def _phrase(o):
    """'a red circle at the top left' ('an' before orange)"""
    colour = COLOURS[o['color']]
    art = 'an' if colour[0] in 'aeiou' else 'a'
    return f'{art} {colour} {SHAPES[o["shape"]]} {_where(o["cell"])}'


def caption(sc):
    parts = [_phrase(o) for o in sc['objects']]
    s = parts[-1] if len(parts) == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]
    return s[0].upper() + s[1:] + '.'


def question(seed, sc, qtype=None):
    """(qtype name, question, answer, uses_image) for item `seed`."""
    rng = Rng(2 * seed + 1)
    t = rng.rnd(len(QTYPES))
    if qtype is not None:
        t = QTYPES.index(qtype)
    objs = sc['objects']
    o = objs[rng.rnd(len(objs))]
    name = QTYPES[t]
    if name == 'caption':
        return name, 'Describe the image.', caption(sc), True
    if name == 'color':
        return name, f'What color is the {SHAPES[o["shape"]]}?', COLOURS[o['color']], True
    if name == 'shape':
        return name, f'What shape is {_where(o["cell"])}?', SHAPES[o['shape']], True
    if name == 'where':
        return (name, f'Where is the {COLOURS[o["color"]]} {SHAPES[o["shape"]]}?',
                POSITIONS[o['cell']], True)
    if name == 'count':
        return name, 'How many shapes are there?', NUMBERS[len(objs)], True
    if name == 'exists':
        if rng.rnd(2):
            c, s = o['color'], o['shape']
        else:
            c, s = rng.rnd(len(COLOURS)), rng.rnd(len(SHAPES))
        yes = any(p['color'] == c and p['shape'] == s for p in objs)
        return name, f'Is there a {COLOURS[c]} {SHAPES[s]}?', 'yes' if yes else 'no', True
    # text-only
    if rng.rnd(2):
        a, b = rng.rnd(10), rng.rnd(10)
        return name, f'What is {a} plus {b}?', str(a + b), False
    s = rng.rnd(len(SHAPES))
    return name, f'How many corners does a {SHAPES[s]} have?', CORNERS[s], False


def item(seed, qtype=None):
    sc = scene(seed)
    t, q, a, uses_image = question(seed, sc, qtype)
    return dict(seed=seed, scene=sc, qtype=t, question=q, answer=a, image=uses_image)


def caption_words(text):
    """The (colour, shape) words of a caption, in order: what caption accuracy scores."""
    words = [w.strip('.,') for w in text.split()]
    return [w for w in words if w in COLOURS or w in SHAPES]


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def fixture(seeds):
    """seeds: item seeds, or (seed, forced question type) pairs."""
    out = []
    for s in seeds:
        s, forced = s if isinstance(s, tuple) else (s, None)
        it = item(s, forced)
        px = render(it['scene'])
        out.append(dict(seed=s, seed_str=str(s), forced_type=forced, qtype=it['qtype'], question=it['question'],
                        answer=it['answer'],
                        image=it['image'], caption=caption(it['scene']),
                        pixels_fnv1a64=f'{fnv1a64(px.tobytes()):016x}',
                        pixel_sum=int(px.astype(np.int64).sum())))
    return out


def main():
    ap = argparse.ArgumentParser(description='the shapes world')
    ap.add_argument('--fixture', action='store_true',
                    help='print the JSON fixture tests/unit/test_shapes.c compares with')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--png', help='write the picture of --seed here (needs PIL)')
    args = ap.parse_args()
    if args.fixture:
        seeds = list(range(0, 24)) + [1000000000, 1000000001, 2**40 + 3, 2**63 - 1]
        seeds += [(100 + i, t) for i, t in enumerate(QTYPES)]
        seeds += [(200 + i, 'exists') for i in range(8)] + [(300 + i, 'text') for i in range(6)]
        json.dump(dict(generated_by='tools/train/shapes_world.py --fixture', image_size=IMG,
                       items=fixture(seeds)), sys.stdout, indent=1)
        sys.stdout.write('\n')
        return
    it = item(args.seed)
    print(json.dumps({k: v for k, v in it.items() if k != 'scene'}))
    print(caption(it['scene']))
    if args.png:
        from PIL import Image
        Image.fromarray(render(it['scene'])).save(args.png)


if __name__ == '__main__':
    main()
