#!/usr/bin/python3
"""Makes the tokenizer fixtures in tests/fixtures/tokenizer/ with the SentencePiece library.

Assembles a corpus from text on this machine (licenses, copyright files, man pages, C headers,
translated UI strings in many scripts from .mo catalogs, generated emoji / whitespace / digit
lines), trains BPE models with spm_train, and writes test strings with the library's ids and
decodes. Run through make_fixtures.sh with /usr/bin/python3 (apt python3-sentencepiece).

Files written (all text; strings escaped: \\\\ \\t \\n \\r \\xHH, other UTF-8 raw):
  <m>.model        the SentencePiece models
  strings.txt      one escaped test string per line (shared by every model)
  <m>.ids          index i into strings.txt (every line for internlm_like, a 1500-line
                   selection for the others), TAB, the library's ids, TAB, its decode of them
                   (escaped; "=" when it equals the input bytes)
  <m>.decode       random id sequences (byte runs, controls, unk, markers): ids TAB decode
  <m>.meta         vocab size and special ids as the library reports them
  chat.tsv         chat prompts built like the original chat() and tokenized with the library
  bench_corpus.txt held-out corpus lines for `xcpipe bench tokenize`
"""
import glob
import gettext
import gzip
import os
import random
import subprocess
import sys
import tempfile

import sentencepiece as spm

OUT = sys.argv[1] if len(sys.argv) > 1 else 'tests/fixtures/tokenizer'
RNG = random.Random(20240611)
MARKERS = ['[UNUSED_TOKEN_%d]' % k for k in range(147)]


# ---- escaping -------------------------------------------------------------------------------

def esc(b):
    """bytes -> one line: printable ASCII and valid multibyte UTF-8 raw, the rest escaped."""
    s = b.decode('utf-8', 'surrogateescape')
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '\\':
            out.append('\\\\')
        elif ch == '\t':
            out.append('\\t')
        elif ch == '\n':
            out.append('\\n')
        elif ch == '\r':
            out.append('\\r')
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte
            out.append('\\x%02x' % (o - 0xDC00))
        elif o < 0x20 or o == 0x7F:
            out.append('\\x%02x' % o)
        else:
            out.append(ch)
    return ''.join(out)


# ---- corpus ---------------------------------------------------------------------------------

def read_text(path, limit=200000):
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as f:
                data = f.read(limit)
        else:
            with open(path, 'rb') as f:
                data = f.read(limit)
    except OSError:
        return []
    return data.decode('utf-8', 'replace').splitlines()


def mo_strings(lang, limit):
    out = []
    for path in sorted(glob.glob('/usr/share/locale/%s/LC_MESSAGES/*.mo' % lang)):
        try:
            with open(path, 'rb') as f:
                cat = gettext.GNUTranslations(f)._catalog
        except Exception:
            continue
        for k in sorted(cat, key=str):
            v = cat[k]
            if k and isinstance(v, str) and v.strip():
                out.extend(x for x in v.split('\n') if x.strip())
        if len(out) >= limit:
            break
    return out[:limit]


def emoji_line(rng):
    ranges = [(0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x2600, 0x26FF),
              (0x1F900, 0x1F9FF)]
    parts = []
    for _ in range(rng.randint(1, 12)):
        a, b = rng.choice(ranges)
        e = chr(rng.randint(a, b))
        r = rng.random()
        if r < 0.15:
            e += chr(rng.randint(0x1F3FB, 0x1F3FF))  # skin tone
        elif r < 0.25:
            e += '\u200d' + chr(rng.randint(0x1F466, 0x1F469))  # ZWJ sequence
        elif r < 0.3:
            e += '\ufe0f'
        parts.append(e)
        if rng.random() < 0.4:
            parts.append(rng.choice([' ', 'ok ', ' 好', '!', '  ', '\t']))
    return ''.join(parts)


def ws_line(rng):
    words = ['int', 'x', '=', '0;', 'return', 'if', '{', '}', '好的', 'data', '#', '//', 'def', ':']
    out = []
    for _ in range(rng.randint(1, 10)):
        out.append(rng.choice([' ' * rng.randint(1, 16), '\t' * rng.randint(1, 3),
                               '\n' * rng.randint(1, 4), ' \t ', '\r\n']))
        out.append(rng.choice(words))
    return ''.join(out)


def digit_line(rng):
    return ' '.join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 8)))


def build_corpus():
    """Returns a list of text lines from several sources (deterministic)."""
    lines = []
    for p in sorted(glob.glob('/usr/share/common-licenses/*')):
        lines += read_text(p)
    for p in sorted(glob.glob('/usr/share/doc/*/copyright'))[:400]:
        lines += read_text(p, 30000)
    for p in sorted(glob.glob('/usr/share/man/man1/*.gz'))[:250]:
        lines += read_text(p, 20000)
    for p in sorted(glob.glob('/usr/include/*.h'))[:300]:
        lines += read_text(p, 20000)
    for p in sorted(glob.glob('/usr/lib/python3.11/*.py'))[:60]:
        lines += read_text(p, 30000)
    for lang, n in [('zh_CN', 30000), ('zh_TW', 8000), ('ja', 8000), ('ko', 5000), ('ru', 5000),
                    ('ar', 3000), ('el', 2000), ('hi', 2000), ('de', 3000), ('fr', 3000)]:
        lines += mo_strings(lang, n)
    lines += [emoji_line(RNG) for _ in range(3000)]
    lines += [ws_line(RNG) for _ in range(2000)]
    lines += [digit_line(RNG) for _ in range(1000)]
    # chat-shaped lines so the markers occur in context
    for _ in range(1000):
        lines.append('[UNUSED_TOKEN_146]user\\n%s[UNUSED_TOKEN_145]' % RNG.choice(lines[:5000]))
    lines = [l for l in lines if l.strip()]
    return lines


# ---- models ---------------------------------------------------------------------------------

def train(corpus_path, prefix, vocab, extra):
    args = ['spm_train', '--input=' + corpus_path, '--model_prefix=' + prefix,
            '--model_type=bpe', '--vocab_size=%d' % vocab, '--minloglevel=2',
            '--num_threads=2', '--random_seed=7', '--input_sentence_size=400000',
            '--max_sentence_length=8192'] + extra
    subprocess.run(args, check=True)
    os.remove(prefix + '.vocab')


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(b, i):
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def mark_unused(src, dst, every):
    """Copies a model, turning every `every`-th multi-character NORMAL piece into an UNUSED one
    (type 5) by rewriting the ModelProto wire format (field 1 = pieces; piece fields 1 text,
    2 score, 3 type). The library then still merges through them but re-splits them."""
    b = open(src, 'rb').read()
    out = bytearray()
    i = 0
    k = 0
    while i < len(b):
        key, j = read_varint(b, i)
        field, wt = key >> 3, key & 7
        if wt == 2:
            n, j = read_varint(b, j)
            body = b[j:j + n]
            end = j + n
        elif wt == 0:
            _, end = read_varint(b, j)
            body = None
        elif wt == 5:
            end = j + 4
            body = None
        elif wt == 1:
            end = j + 8
            body = None
        else:
            raise ValueError('wire type %d' % wt)
        if field == 1 and wt == 2:
            # parse piece
            p = 0
            text = None
            score = b''
            ptype = 1
            while p < len(body):
                pk, p = read_varint(body, p)
                if pk == (1 << 3 | 2):
                    ln, p = read_varint(body, p)
                    text = body[p:p + ln]
                    p += ln
                elif pk == (2 << 3 | 5):
                    score = body[p:p + 4]
                    p += 4
                elif pk == (3 << 3 | 0):
                    ptype, p = read_varint(body, p)
                else:
                    raise ValueError('piece field %d' % pk)
            if ptype == 1 and len(text.decode('utf-8')) >= 2:
                k += 1
                if k % every == 0:
                    ptype = 5
            nb = varint(1 << 3 | 2) + varint(len(text)) + text
            if score:
                nb += varint(2 << 3 | 5) + score
            nb += varint(3 << 3) + varint(ptype)
            out += varint(1 << 3 | 2) + varint(len(nb)) + nb
        else:
            out += b[i:end]
        i = end
    open(dst, 'wb').write(bytes(out))


# ---- test strings ---------------------------------------------------------------------------

def random_unicode(rng, n):
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1F6FF), (0x2000, 0x206F), (0xE000, 0xE0FF), (0x10000, 0x1007F),
              (0x20000, 0x2A6DF), (0xFFF0, 0xFFFD), (0x2580, 0x259F)]
    out = []
    for _ in range(n):
        a, b = rng.choice(ranges)
        out.append(chr(rng.randint(a, b)))
    return ''.join(out).encode('utf-8')


def invalid_utf8(rng, pool):
    bad = [b'\xff', b'\xfe', b'\x80', b'\xbf', b'\xc0\x80', b'\xc1\xbf', b'\xe0\x80\x80',
           b'\xed\xa0\x80', b'\xed\xbf\xbf', b'\xf4\x90\x80\x80', b'\xf5\x80\x80\x80',
           b'\xf8\x88\x80\x80\x80', b'\xe4\xb8', b'\xe4', b'\xf0\x9f\x98', b'\xf0\x9f',
           b'\xc3', b'\xef\xbf\xbd', b'\xe2\x96', b'\xe2\x96\x81', b'\x00']
    kind = rng.random()
    if kind < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    base = rng.choice(pool).encode('utf-8')
    out = bytearray()
    for _ in range(rng.randint(1, 4)):
        cut = rng.randint(0, len(base))
        out += base[:cut] + rng.choice(bad)
        base = base[cut:]
    out += base
    if kind < 0.5 and len(out) > 3:
        # cut a multibyte character in half
        del out[rng.randrange(len(out)):]
    return bytes(out)


def edge_cases():
    c = ['', ' ', '  ', '   ', '\n', '\n\n', '\n\n\n\n\n', '\t', '\t\t', '\r\n', ' \n ', 'a',
         ' a', 'a ', '  a  ', 'a  b', 'a\n\nb', '  leading', 'trailing  ', ' both ',
         'x' * 300, ' ' * 100, '\n' * 64, 'ab' * 500, '中' * 200,
         '[UNUSED_TOKEN_145]', '[UNUSED_TOKEN_146]', '[UNUSED_TOKEN_0]', '[UNUSED_TOKEN_99]',
         'x[UNUSED_TOKEN_145]y', 'foo[UNUSED_TOKEN_146]bar[UNUSED_TOKEN_145]baz',
         '[UNUSED_TOKEN_145][UNUSED_TOKEN_145]', ' [UNUSED_TOKEN_145] ',
         '[UNUSED_TOKEN_14', '[UNUSED_TOKEN_1450]', '[[UNUSED_TOKEN_145]]', 'UNUSED_TOKEN_145]',
         '[unused_token_145]', '[UNUSED_TOKEN_146]user\nhello[UNUSED_TOKEN_145]\n',
         '[UNUSED_TOKEN_146]assistant\n', '<s>', '</s>', '<unk>', '<pad>', '<0x41>', '<0xE4>',
         '\u2581', '\u2581\u2581a', '\u2581 \u2581', 'a\u2581b', '\ufffd', '\x00', 'a\x00b',
         '\x01\x02\x03', '\x7f', '\u200b', '\u00a0', '\u3000', 'e\u0301', 'ﬁ', 'Ａ１',
         '1234567890', '3.14159', '2024-06-11 12:00:00', 'https://example.com/a?b=c&d=e',
         'int main(void) {\n    return 0;\n}\n', '    indented', '\t\tif (x) {', '😀', '👍🏽',
         '👨\u200d👩\u200d👧', '🇨🇳', '浦语·灵笔', '上海人工智能实验室', 'English and 中文.',
         'مرحبا بالعالم', 'שלום', 'こんにちは世界', '안녕하세요', 'Привет, мир', 'ℌ𝔢𝔩𝔩𝔬',
         '\U0010FFFF', '\U00020000', '<ImageHere>', 'Describe<ImageHere>this']
    return [s.encode('utf-8') for s in c]


def make_strings(held_out):
    rng = random.Random(99)
    out = edge_cases()
    pool = [l for l in held_out if l.strip()]
    out += [l.encode('utf-8') for l in rng.sample(pool, 2600)]
    for _ in range(500):  # multi-line strings
        out.append('\n'.join(rng.sample(pool, rng.randint(2, 4))).encode('utf-8'))
    for _ in range(300):  # whitespace variants
        l = rng.choice(pool)
        out.append((' ' * rng.randint(0, 3) + l + ' ' * rng.randint(0, 3)).encode('utf-8'))
    for _ in range(300):  # markers inside words
        l = rng.choice(pool)
        cut = rng.randint(0, len(l))
        out.append((l[:cut] + rng.choice(MARKERS[140:]) + l[cut:]).encode('utf-8'))
    out += [random_unicode(rng, rng.randint(1, 60)) for _ in range(600)]
    out += [invalid_utf8(rng, pool) for _ in range(500)]
    out += [emoji_line(rng).encode('utf-8') for _ in range(150)]
    out += [ws_line(rng).encode('utf-8') for _ in range(150)]
    out += [digit_line(rng).encode('utf-8') for _ in range(100)]
    return out


def random_ids(rng, sp):
    n = sp.get_piece_size()
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    special = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    marks = [sp.piece_to_id(m) for m in MARKERS[144:] if sp.piece_to_id(m) != sp.unk_id()]
    out = []
    for _ in range(rng.randint(0, 20)):
        r = rng.random()
        if r < 0.35 and byte_ids:
            out += [rng.choice(byte_ids) for _ in range(rng.randint(1, 5))]
        elif r < 0.45 and byte_ids:
            ch = rng.choice(['中', '😀', 'é', '\u2581', '\ufffd']).encode('utf-8')
            ch = ch[:rng.randint(1, len(ch))]
            out += [sp.piece_to_id('<0x%02X>' % c) for c in ch]
        elif r < 0.55 and special:
            out.append(rng.choice(special))
        elif r < 0.6 and marks:
            out.append(rng.choice(marks))
        else:
            out.append(rng.randrange(n))
    return out


def write_model_cases(name, strings, which, n_decode):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, name + '.model'))
    with open(os.path.join(OUT, name + '.ids'), 'w', encoding='utf-8', newline='\n') as f:
        for i in which:
            s = strings[i]
            ids = sp.encode(s)
            dec = sp.decode(ids).encode('utf-8')
            f.write('%d\t%s\t%s\n' % (i, ' '.join(map(str, ids)), '=' if dec == s else esc(dec)))
    rng = random.Random(5)
    with open(os.path.join(OUT, name + '.decode'), 'w', encoding='utf-8', newline='\n') as f:
        for _ in range(n_decode):
            ids = random_ids(rng, sp)
            f.write('%s\t%s\n' % (' '.join(map(str, ids)), esc(sp.decode(ids).encode('utf-8'))))
    with open(os.path.join(OUT, name + '.meta'), 'w') as f:
        f.write('vocab %d\nunk %d\nbos %d\neos %d\npad %d\nim_end %d\nim_start %d\n' % (
            sp.get_piece_size(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id(),
            sp.piece_to_id('[UNUSED_TOKEN_145]'), sp.piece_to_id('[UNUSED_TOKEN_146]')))


# ---- chat template (the original chat() string building) ------------------------------------

META_VL = '\n'.join([
    'You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).',
    '- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model that is '
    'developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, '
    'and harmless.',
    '- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language '
    'chosen by the user such as English and 中文.',
    '- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses '
    'effectively based on the provided image.'])
META_7B = '\n'.join([
    'You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).',
    '- InternLM-XComposer (浦语·灵笔) is a conversational language model that is developed by '
    'Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.',
    '- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language '
    'chosen by the user such as English and 中文.'])


def chat_prompt(query, history, meta):
    prompt = ''
    if meta:
        prompt += '[UNUSED_TOKEN_146]system\n%s[UNUSED_TOKEN_145]\n' % meta
    for q, a in history:
        prompt += ('[UNUSED_TOKEN_146]user\n%s[UNUSED_TOKEN_145]\n'
                   '[UNUSED_TOKEN_146]assistant\n%s[UNUSED_TOKEN_145]\n' % (q, a))
    prompt += '[UNUSED_TOKEN_146]user\n%s[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n' % query
    return prompt


def hf_tokenize(sp, text):
    """What the slow HF tokenizer does with add_special_tokens=True: BOS, then the text split on
    the special-token strings (<s> here) with each piece run through SentencePiece."""
    ids = [sp.bos_id()]
    for i, chunk in enumerate(text.split('<s>')):
        if i > 0:
            ids.append(sp.bos_id())
        if chunk:
            ids += sp.encode(chunk)
    return ids


def chat_ids(sp, query, history, meta, n_images, tpi, single_bos):
    if n_images == 0:
        # build_inputs(): a literal <s> then the prompt; the tokenizer adds its own BOS.
        ids = hf_tokenize(sp, '<s>' + chat_prompt(query, history, meta))
        return ids[1:] if single_bos else ids
    # interleav_wrap_chat(): split at <ImageHere>, BOS on every non-empty text part.
    parts = chat_prompt(query, history, meta).split('<ImageHere>')
    assert len(parts) == n_images + 1
    ids = []
    for idx, part in enumerate(parts):
        if part:
            if not single_bos or not ids:
                ids.append(sp.bos_id())
            ids += sp.encode(part)
        if idx < n_images:
            ids += [-1] * tpi
    return ids


def write_chat(name):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, name + '.model'))
    rng = random.Random(11)
    qs = ['<ImageHere>Please describe this image in detail.', 'What is 1+1?',
          '<ImageHere><ImageHere>Compare the two images.', 'Image 1 <ImageHere>; Image 2 <ImageHere>',
          '你好，请介绍一下你自己。', '  spaces  around  ', 'line1\nline2\n\n', '<ImageHere>',
          'emoji 😀 and tab\there', 'x[UNUSED_TOKEN_145]y']
    hist = [('hi', 'Hello! How can I help?'), ('<ImageHere>what is this?', 'A cat.'),
            ('数学', '好的'), ('', '')]
    with open(os.path.join(OUT, 'chat.tsv'), 'w', encoding='utf-8', newline='\n') as f:
        f.write('# variant\tbos(per_segment|single)\tsystem(- = default)\tn_history\t'
                '[user\tassistant]*\tquery\tn_images\ttokens_per_image\tids (-1 = image row)\n')
        for case in range(60):
            variant = rng.choice(['vl', '7b'])
            bos = rng.choice(['per_segment', 'single'])
            sysmode = rng.choice(['-', '-', '', 'You are a helpful bot.\nBe brief.'])
            meta = (META_VL if variant == 'vl' else META_7B) if sysmode == '-' else sysmode
            h = rng.sample(hist, rng.randint(0, 2))
            q = qs[case % len(qs)]
            text = chat_prompt(q, h, meta)
            n_images = text.count('<ImageHere>')
            if case % 10 == 1 and n_images:
                n_images = 0  # text-only path: not allowed with markers; skip
                continue
            tpi = rng.choice([1, 4, 9])
            ids = chat_ids(sp, q, h, meta, n_images, tpi, bos == 'single')
            fields = [variant, bos, '-' if sysmode == '-' else esc(sysmode.encode()), str(len(h))]
            for a, b in h:
                fields += [esc(a.encode()), esc(b.encode())]
            fields += [esc(q.encode()), str(n_images), str(tpi), ' '.join(map(str, ids))]
            f.write('\t'.join(fields) + '\n')


# ---- main -----------------------------------------------------------------------------------

def main():
    os.makedirs(OUT, exist_ok=True)
    lines = build_corpus()
    RNG.shuffle(lines)
    n_hold = 8000
    held, train_lines = lines[:n_hold], lines[n_hold:]
    print('corpus: %d training lines (%.1f MB), %d held out' % (
        len(train_lines), sum(len(l.encode()) for l in train_lines) / 1e6, len(held)))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, 'corpus.txt')
        with open(corpus, 'w', encoding='utf-8') as f:
            f.write('\n'.join(train_lines) + '\n')
        udf = os.path.join(tmp, 'udf.txt')
        with open(udf, 'w') as f:
            f.write('\n'.join(MARKERS) + '\n')
        # InternLM2-like: identity normalization, no dummy prefix, whitespace kept, digits split,
        # whitespace-only pieces, byte fallback, [UNUSED_TOKEN_0..146] as user-defined pieces.
        internlm = ['--normalization_rule_name=identity', '--add_dummy_prefix=false',
                    '--remove_extra_whitespaces=false', '--split_digits=true',
                    '--allow_whitespace_only_pieces=true', '--byte_fallback=true',
                    '--user_defined_symbols_file=' + udf]
        train(corpus, os.path.join(OUT, 'internlm_like'), 8000,
              internlm + ['--character_coverage=0.995'])
        # The other normalizer branches: dummy prefix, extra-whitespace removal, a pad id.
        train(corpus, os.path.join(OUT, 'dummy_prefix'), 3000,
              ['--normalization_rule_name=identity', '--add_dummy_prefix=true',
               '--remove_extra_whitespaces=true', '--byte_fallback=true', '--pad_id=3',
               '--character_coverage=0.98',
               '--user_defined_symbols=[UNUSED_TOKEN_145],[UNUSED_TOKEN_146]'])
        # No byte fallback: rare characters become <unk>; dummy prefix without whitespace removal.
        train(corpus, os.path.join(OUT, 'no_fallback'), 2000,
              ['--normalization_rule_name=identity', '--add_dummy_prefix=true',
               '--remove_extra_whitespaces=false', '--character_coverage=0.995',
               '--control_symbols=<ctl>', '--user_defined_symbols=[UNUSED_TOKEN_145],[UNUSED_TOKEN_146]'])
        # Tiny model for the tiny demo checkpoint: InternLM2-like settings, vocab 1000.
        # (trained on the ASCII lines only: BPE needs character_coverage >= 0.98, and CJK would
        # take the whole vocabulary; everything else goes through byte fallback)
        ascii_corpus = os.path.join(tmp, 'ascii.txt')
        with open(ascii_corpus, 'w', encoding='utf-8') as f:
            f.write('\n'.join(l for l in train_lines if l.isascii()) + '\n')
        train(ascii_corpus, os.path.join(OUT, 'tiny'), 1000,
              internlm + ['--character_coverage=1.0'])
    # A copy of internlm_like with some pieces marked UNUSED (library re-splits them).
    mark_unused(os.path.join(OUT, 'internlm_like.model'), os.path.join(OUT, 'unused.model'), 5)

    strings = make_strings(held)
    with open(os.path.join(OUT, 'strings.txt'), 'w', encoding='utf-8', newline='\n') as f:
        for s in strings:
            f.write(esc(s) + '\n')
    # Every string for the InternLM2-like model; the first 1500 (all edge cases, then a sample of
    # every kind, see make_strings) for the others, to keep the fixtures small.
    n_edge = len(edge_cases())
    head = list(range(n_edge)) + list(range(n_edge, len(strings), 4))[:1500 - n_edge]
    write_model_cases('internlm_like', strings, range(len(strings)), 400)
    for name in ['dummy_prefix', 'no_fallback', 'unused', 'tiny']:
        write_model_cases(name, strings, head, 200)
    write_chat('internlm_like')
    with open(os.path.join(OUT, 'bench_corpus.txt'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(held[:3500]) + '\n')
    print('strings: %d' % len(strings))


if __name__ == '__main__':
    main()
