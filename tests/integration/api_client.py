"""The HTTP API through the official openai Python client (and raw sockets for a disconnect).

usage: api_client.py BASE_URL API_KEY IMAGE_FILE
Checks: whole and streamed chat give the same greedy text; usage counts image rows; n = 2 with a
seed is reproducible; a stop string cut from a known answer ends the text right before it, also
when streamed; logprobs: one entry per generated token, the chosen token's logprob equals the
best alternative under greedy, alternatives sorted, all <= 0; multi-turn history with an image in
an earlier turn; errors map to the client's exception classes; a streaming client that
disconnects frees its KV blocks (xcpipe_kv_blocks_used back to 0, cancellations counted).
"""
import base64
import json
import socket
import sys
import time
import urllib.request

import openai

base, key, image_file = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
img_url = "data:image/jpeg;base64," + base64.b64encode(open(image_file, "rb").read()).decode()


def check(cond, what):
    if not cond:
        print("FAIL:", what, file=sys.stderr)
        sys.exit(1)


def metrics():
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer " + key})
    out = {}
    for line in urllib.request.urlopen(req, timeout=10).read().decode().splitlines():
        if line and not line.startswith("#"):
            name, val = line.rsplit(" ", 1)
            out[name] = float(val)
    return out


msgs = [{"role": "user", "content": "Tell me a story"}]

# whole vs streamed, greedy
whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
check(whole.object == "chat.completion", "object")
c0 = whole.choices[0]
check(c0.finish_reason in ("length", "stop"), "finish_reason")
check(whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0, "usage")
check(whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens,
      "total_tokens")
text = c0.message.content
stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
parts, usage, finish, roles = [], None, None, 0
for ch in stream:
    if ch.usage:
        usage = ch.usage
    for c in ch.choices:
        roles += c.delta.role == "assistant"
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("".join(parts) == text, "streamed text %r != whole %r" % ("".join(parts), text))
check(roles == 1 and finish == c0.finish_reason, "stream role/finish")
check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens
      and usage.prompt_tokens == whole.usage.prompt_tokens, "stream usage")
print("whole == streamed (greedy): %r" % text)

# images as data URLs: usage counts the image rows (16 per image on the tiny 7b model)
m0 = metrics()
with_img = client.chat.completions.create(
    model="tiny", max_tokens=4, temperature=0,
    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img_url}},
                                           {"type": "text", "text": "Tell me a story"}]}])
m1 = metrics()
check(m1["xcpipe_image_tokens_total"] - m0["xcpipe_image_tokens_total"] == 16, "image tokens")
check(with_img.usage.prompt_tokens >= whole.usage.prompt_tokens + 16, "usage with an image")
# history with an image in an earlier turn
hist = client.chat.completions.create(
    model="tiny", max_tokens=4, temperature=0,
    messages=[{"role": "system", "content": "You are terse."},
              {"role": "user", "content": [{"type": "image_url", "image_url": {"url": img_url}},
                                           {"type": "text", "text": "What is it?"}]},
              {"role": "assistant", "content": "A picture."},
              {"role": "user", "content": "And its colour?"}])
check(hist.choices[0].finish_reason in ("length", "stop"), "history with image")
print("images: prompt %d tokens with one image vs %d without; history with an image ok"
      % (with_img.usage.prompt_tokens, whole.usage.prompt_tokens))

# n = 2 with a seed: reproducible, two choices
a = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, n=2, seed=7)
b = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, n=2, seed=7)
check(len(a.choices) == 2 and [c.index for c in a.choices] == [0, 1], "n=2 choices")
check([c.message.content for c in a.choices] == [c.message.content for c in b.choices],
      "seeded n=2 not reproducible")
check(a.usage.completion_tokens <= 16, "n=2 usage")
print("n=2 seeded: reproducible")

# stop strings: cut a known greedy answer before a substring that spans tokens
long = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40,
                                      temperature=0).choices[0].message.content
cut = None
for i in range(2, len(long) - 3):
    s = long[i:i + 3]
    if "\ufffd" not in s and long.find(s) == i:
        cut = (i, s)
        break
check(cut is not None, "no stop candidate in %r" % long)
i, s = cut
st = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0,
                                    stop=[s, "\u0001never"])
check(st.choices[0].message.content == long[:i], "stop: %r != %r" % (
    st.choices[0].message.content, long[:i]))
check(st.choices[0].finish_reason == "stop", "stop finish_reason")
sp = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0,
                                    stop=s, stream=True)
got = "".join(c.delta.content or "" for ch in sp for c in ch.choices)
check(got == long[:i], "streamed stop: %r != %r" % (got, long[:i]))
print("stop %r: cut at %d (whole and streamed)" % (s, i))

# logprobs
lp = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0,
                                    logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
check(len(content) == lp.usage.completion_tokens, "one logprob per token")
for e in content:
    tops = [t.logprob for t in e.top_logprobs]
    check(len(tops) == 3 and tops == sorted(tops, reverse=True), "top_logprobs sorted")
    check(all(t <= 0 for t in tops) and e.logprob <= 0, "logprobs <= 0")
    check(abs(e.logprob - tops[0]) < 1e-6 and e.token == e.top_logprobs[0].token,
          "greedy picks the most likely token")
check("".join(e.token for e in content) == lp.choices[0].message.content or
      "\ufffd" in lp.choices[0].message.content, "logprob tokens spell the text")
print("logprobs: %d tokens, first %.4f" % (len(content), content[0].logprob))

# errors through the client
for kwargs, exc in [({"model": "nope"}, openai.NotFoundError),
                    ({"model": "tiny", "extra_body": {"bogus": 1}}, openai.BadRequestError),
                    ({"model": "tiny", "max_tokens": 100000}, openai.BadRequestError)]:
    try:
        client.chat.completions.create(messages=msgs, **kwargs)
        check(False, "no error for %r" % kwargs)
    except exc as e:
        check(isinstance(e.body, dict) and "message" in e.body, "error body %r" % e.body)
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "wrong key accepted")
except openai.AuthenticationError:
    pass
check([m.id for m in client.models.list().data] == ["tiny"], "models")
print("errors: NotFound, BadRequest, Authentication as the client expects")

# a streaming client that goes away: its KV returns to the pool within one scheduling step
host, port = base.split("//")[1].split(":")
body = json.dumps({"model": "tiny", "messages": msgs, "max_tokens": 3000, "n": 8,
                   "temperature": 0, "stream": True, "ignore_eos": True}).encode()
before = metrics()["xcpipe_requests_cancelled_total"]
sk = socket.create_connection((host, int(port)))
sk.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
           key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: " +
           str(len(body)).encode() + b"\r\n\r\n" + body)
buf = b""
while b"data: " not in buf:
    buf += sk.recv(4096)
t0 = time.time()
while True:  # admitted within a scheduling step or two
    used = metrics()["xcpipe_kv_blocks_used"]
    if used > 0:
        break
    check(time.time() - t0 < 1.0, "no KV blocks in use while streaming")
    time.sleep(0.005)
t0 = time.time()
sk.close()
while True:
    m = metrics()
    if m["xcpipe_kv_blocks_used"] == 0 and m["xcpipe_requests_cancelled_total"] >= before + 8:
        break
    check(time.time() - t0 < 1.0, "KV not freed 1 s after the client left: %r" % m)
    time.sleep(0.01)
print("disconnect: %d KV blocks back in %.0f ms, 8 sequences cancelled"
      % (used, (time.time() - t0) * 1000))
