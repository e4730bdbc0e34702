"""A long conversation's page: the server time of GET /c/<id>/ for a conversation of 500 messages (250
questions and answers of a realistic mix of markdown: paragraphs, lists, code, a table), through the whole
Django stack in this process (middleware, session, the view's queries, the template) on SQLite.

Rounds alternate between the page as it is served (each answer's HTML stored once, conversations/chat/
markdown.py) and the same page when every answer must be rendered again (the stored HTML another
renderer's: what each view cost before answers were stored; the view stores them again, so each such
round first marks them stale). Writes bench/results/page.json and prints, last:
  page500_ms=         median server time of the page as served (issue 26's goal: <= 150)
  page500_render_ms=  median server time when every answer is rendered on that view

    .venv/bin/python bench/page.py [--turns 250] [--rounds 9] [--threads 1]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stream import ROOT, setup_django

ANSWER = """Here is what I would do, step by step:

1. **Read the error** carefully: the last line names the file and the line.
2. Check the *inputs* you pass, for example `parse(text, strict=True)`.
3. Run the smallest example that still fails.

```python
def parse(text, strict=False):
    items = [line.split("=", 1) for line in text.splitlines() if line]
    return {key.strip(): value.strip() for key, value in items}
```

| option | default | meaning |
|:--|:-:|--:|
| strict | False | refuse unknown keys |
| encoding | utf-8 | how the file is read |

If that still fails, send me the traceback and the version of the library ({n})."""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch's and OpenMP's threads (no model runs)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "page.json"))
    return parser.parse_args()


def long_conversation(turns):
    from django.contrib.auth import get_user_model

    from conversations.models import Conversation
    from modelhub.models import ModelSpec

    owner = get_user_model().objects.create_user("reader", password="bench-pass-123")
    spec = ModelSpec.objects.create(name="m", source="-", backend="scripted", is_default=True)
    conversation = Conversation.objects.create(owner=owner, title="a long one")
    for n in range(turns):
        conversation.add_user_message(f"question {n}: why does my parser fail on line {n}?")
        conversation.start_reply(spec, {}).finish("complete", ANSWER.replace("{n}", str(n)))
    return owner, conversation


def served_ms(client, url):
    started = time.perf_counter()
    response = client.get(url)
    assert response.status_code == 200, (response.status_code, response.content[:300])
    return (time.perf_counter() - started) * 1000


def main():
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    setup_django(tempfile.mkdtemp(prefix="chatsite-bench-page-"))
    from django.test import Client

    from conversations.models import Message

    owner, conversation = long_conversation(args.turns)
    client = Client(SERVER_NAME="127.0.0.1")  # a host the settings allow
    client.force_login(owner)
    url = conversation.get_absolute_url()
    served_ms(client, url)  # the first view renders and stores every answer
    messages = conversation.messages.count()
    stored, rendered = [], []
    for index in range(args.rounds):
        for kind in ("stored", "rendered") if index % 2 == 0 else ("rendered", "stored"):
            if kind == "rendered":
                Message.objects.filter(conversation=conversation).update(rendered_with="another renderer")
            (stored if kind == "stored" else rendered).append(served_ms(client, url))
        print(f"round {index}: stored {stored[-1]:.0f} ms  rendered {rendered[-1]:.0f} ms", flush=True)
    result = {
        "messages": messages,
        "database": "sqlite",
        "stored_ms": stored,
        "rendered_ms": rendered,
        "page500_ms": statistics.median(stored),
        "page500_render_ms": statistics.median(rendered),
        "load_average": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"messages={messages}")
    print(f"page500_render_ms={result['page500_render_ms']:.1f}")
    print(f"page500_ms={result['page500_ms']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
