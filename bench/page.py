"""A long conversation's page: the server time of GET /c/<id>/ for a conversation of 500 messages (250
questions and answers of a realistic mix of markdown: paragraphs, lists, code, a table), through the whole
Django stack in this process (middleware, session, the view's queries, the template) on SQLite.

The page shows the newest CHAT_PAGE_MESSAGES (100) messages and loads earlier ones a window at a time
("Show earlier messages", GET /c/<id>/earlier/?before=<id>). Rounds alternate between
  stored:   the page as served (each answer's HTML stored once, conversations/chat/markdown.py),
  rendered: the same page when every answer shown must be rendered again (the stored HTML another
            renderer's: what each view cost before answers were stored; the view stores them again, so
            each such round first marks them stale),
  all:      the page and then every earlier window, one request after another: what reading the whole
            conversation costs the server.
Writes bench/results/page.json and prints, last:
  page500_all_ms=     median server time of the page and all its earlier windows together
  page500_render_ms=  median server time of the page when every answer it shows is rendered on that view
  page500_ms=         median server time of the page as served (issue 26's goal: <= 150)

    .venv/bin/python bench/page.py [--turns 250] [--rounds 9] [--threads 1]
"""

import argparse
import json
import os
import re
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


EARLIER = re.compile(r'hx-get="([^"]+/earlier/\?before=\d+)"')


def all_windows_ms(client, url):
    """The page, then each earlier window the page (then the window) offers: their server times together,
    and the number of requests."""
    total, requests, html = 0.0, 0, ""
    while url is not None:
        started = time.perf_counter()
        response = client.get(url, **({"HTTP_HX_REQUEST": "true"} if requests else {}))
        total += (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (response.status_code, response.content[:300])
        html, requests = response.content.decode(), requests + 1
        found = EARLIER.search(html)
        url = found.group(1) if found else None
    return total, requests


def main():
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    setup_django(tempfile.mkdtemp(prefix="chatsite-bench-page-"))
    from django.conf import settings
    from django.test import Client

    from conversations.models import Message

    owner, conversation = long_conversation(args.turns)
    client = Client(SERVER_NAME="127.0.0.1")  # a host the settings allow
    client.force_login(owner)
    url = conversation.get_absolute_url()
    served_ms(client, url)  # the first view renders and stores every answer
    messages = conversation.messages.count()
    all_windows_ms(client, url)  # every earlier window rendered and stored once, as the page's were
    times = {"stored": [], "rendered": [], "all": []}
    for index in range(args.rounds):
        kinds = ("stored", "rendered", "all")
        for kind in kinds[index % 3 :] + kinds[: index % 3]:
            if kind == "rendered":
                Message.objects.filter(conversation=conversation).update(rendered_with="another renderer")
            if kind == "all":
                spent, requests = all_windows_ms(client, url)
                times[kind].append(spent)
            else:
                times[kind].append(served_ms(client, url))
            if kind == "rendered":  # that view stored its own answers again: the earlier ones' too, unmeasured
                all_windows_ms(client, url)
        print(f"round {index}: " + "  ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()), flush=True)
    result = {
        "messages": messages,
        "database": "sqlite",
        "shown_at_first": settings.CHAT_PAGE_MESSAGES,
        "requests_to_read_all": requests,
        "stored_ms": times["stored"],
        "rendered_ms": times["rendered"],
        "all_windows_ms": times["all"],
        "page500_ms": statistics.median(times["stored"]),
        "page500_render_ms": statistics.median(times["rendered"]),
        "page500_all_ms": statistics.median(times["all"]),
        "load_average": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"messages={messages} shown_at_first={settings.CHAT_PAGE_MESSAGES} requests_to_read_all={requests}")
    print(f"page500_all_ms={result['page500_all_ms']:.1f}")
    print(f"page500_render_ms={result['page500_render_ms']:.1f}")
    print(f"page500_ms={result['page500_ms']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
