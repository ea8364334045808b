"""Drives `troupe serve` with the official `openai` client: models, completions and chat
completions, streaming and not (streamed text must equal the whole response's for greedy
requests; usage arrives on the last chunk), and the errors the client maps to its exception
types. Usage: python openai_client.py BASE_URL MODEL API_KEY. Prints `ok` when every check holds.
"""
import sys

import openai
from openai import OpenAI

base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)

ids = [m.id for m in client.models.list()]
assert ids == [model], ids

whole = client.completions.create(model=model, prompt="Fortune:", max_tokens=12, temperature=0)
text = whole.choices[0].text
assert whole.object == "text_completion", whole
assert whole.choices[0].finish_reason in ("stop", "length"), whole
assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens >= 1, whole.usage

chunks = list(client.completions.create(
    model=model, prompt="Fortune:", max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].text for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens, chunks[-1]

messages = [{"role": "user", "content": "Tell me a fortune."}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
answer = chat.choices[0].message
assert answer.role == "assistant" and isinstance(answer.content, str), chat
assert chat.usage.completion_tokens >= 1, chat.usage

parts = list(client.chat.completions.create(
    model=model, messages=messages, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True}))
assert parts[0].choices[0].delta.role == "assistant", parts[0]
joined = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
assert joined == answer.content, (joined, answer.content)
assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == chat.usage.completion_tokens

sampled = client.completions.create(model=model, prompt="Fortune:", max_tokens=8, temperature=0.8,
                                    top_p=0.9, seed=11)
again = client.completions.create(model=model, prompt="Fortune:", max_tokens=8, temperature=0.8,
                                  top_p=0.9, seed=11)
assert sampled.choices[0].text == again.choices[0].text, (sampled, again)

stopped = client.completions.create(model=model, prompt="Fortune:", max_tokens=12, temperature=0,
                                    stop=[text[2:4]] if len(text) >= 4 else None)
if len(text) >= 4:
    assert stopped.choices[0].text == text[: text.find(text[2:4])], (stopped, text)
    assert stopped.choices[0].finish_reason == "stop", stopped

try:
    client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body

try:
    client.completions.create(model=model, prompt="x", max_tokens=2, n=2)
    raise AssertionError("n=2 accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "n", e.body

try:
    OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e

print("ok")
