"""Fuzz: 10,000 malformed frames at the chat websocket of a live server, and bad handshakes.

Frame i is drawn from its own seeded RNG (`--seed`, i), so a run is the same whatever
the sockets' timing; its category is drawn by weight (CATEGORIES). Frames are written as
raw text (or bytes), never through json.dumps, so they can hold what a hostile client
sends: JSON nested 1,000+ deep, lone UTF-16 surrogates as `\\ud800` escapes, `\\u0000`,
numbers past any machine type (1e400, 2**70), wrong types for every field, 1 MB
strings (some just under daphne's 1 MiB frame limit, some over), unknown types, huge
or negative message ids, binary frames, and another user's message ids.

--sockets sockets share the frames, each on a fresh conversation of its own user; a
socket the server closes (or that leaves a frame unanswered) is reopened on a new
conversation. The server's frame rate limits are lifted (unless --rate-limits): the
point is where each malformed frame leads, not flood control. For every frame the
first answer is recorded: an `error` frame (good; by code), a close (by code), nothing
within --answer-timeout, a chat turn (the frame was taken as one: its reply is read to
its `done` before the next frame), or another answer (`sync` answers with a `path`). Then: bad handshake paths and
headers (the HTTP status of each refusal), a normal chat turn on a fresh socket of
each server process (it must complete), and the tracebacks in the server logs.

Writes bench/results/fuzz.json; prints a breakdown per category, then
`fuzz_tracebacks=<n>`, `fuzz_unanswered=<n>` and `fuzz_closed=<n>` last, once per backend.

    .venv/bin/python bench/fuzz.py [--backend sqlite|postgres|both] [--frames 10000] [--seed 0]
"""

import argparse
import asyncio
import json
import random
import string
import sys
import time
from collections import Counter, defaultdict

from live import Live, add_arguments, run_backends

TURNS = ["send", "edit", "regenerate", "continue", "compare"]
OPTIONS = ["temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed", "ignore_eos"]
HUGE = [
    "1e400",
    "-1e400",
    "1e309",
    "1e-400",
    str(2**70),
    str(-(2**70)),
    str(2**63),
    str(2**64),
    str(10**300),
    "NaN",
    "Infinity",
    "-Infinity",
    "123456789012345678901234567890.5",
]
WRONG = ["null", "true", "false", "0", "-1", "1.5", '""', '"x"', '"1"', "[]", "[1]", "{}", '{"a": 1}']
MiB = 2**20


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sockets", type=int, default=8)
    parser.add_argument("--answer-timeout", type=float, default=3.0, help="seconds to wait for a frame's answer")
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="bound on sending frames")
    parser.add_argument("--categories", help="comma-separated: draw frames from these categories only")
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="keep the server's frame rate limits (lifted by default: frames reach their code)",
    )
    add_arguments(parser, model="scripted")
    args = parser.parse_args()
    if args.categories and not set(args.categories.split(",")) <= set(CATEGORIES):
        parser.error(f"--categories: choose from {', '.join(CATEGORIES)}")
    return args


# --- frames: each generator takes the frame's RNG and the ids of another user's messages --------


def q(text):
    """A JSON string literal of `text` (escapes as json.dumps writes them)."""
    return json.dumps(text)


def bad_json(rng, _):
    valid = '{"type": "send", "content": "hello there"}'
    return rng.choice(
        [
            valid[: rng.randrange(len(valid))],
            valid + rng.choice(["}", ",", "x", "]"]),
            "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 200))),
            '{"type": "send", "content": "x",}',
            "{'type': 'send', 'content': 'x'}",
            "",
            " ",
            "{",
            '{"type":}',
            "null",
            "[]",
            '"send"',
            "123",
            "true",
            "NaN",
            '[{"type": "send", "content": "x"}]',
            '{"type" "send"}',
            '{"type": "send", "content": "a\nb"}',
            '{"type": "send", "content": "\\x41"}',
            '{"type": "\\ud800\\u"}',
            '{"type": "stop", "type": "send", "content": "dup"}',
            "\ufeff" + valid,
            valid.replace('"', "'"),
        ]
    )


def deep_nesting(rng, _):
    depth = rng.choice([1000, 1001, 2000, 5000, 20000, 100000])
    array, obj = "[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth
    return rng.choice(
        [
            array,
            obj,
            '{"type": "send", "content": "hi", "options": ' + obj + "}",
            '{"type": "send", "content": ' + array + "}",
            '{"type": ' + array + "}",
            '{"type": "compare", "content": "hi", "models": ' + array + "}",
            '{"type": "regenerate", "message_id": ' + array + "}",
        ]
    )


def surrogate(rng, _):
    lone = "".join(
        rng.choice(
            [f"\\u{rng.randrange(0xD800, 0xDC00):04x}", f"\\u{rng.randrange(0xDC00, 0xE000):04x}", "\\udc00\\ud800"]
        )
        + rng.choice([" ", " ok "])
        for _ in range(rng.randrange(1, 6))
    )
    text = '"hi ' + lone + ' there"'
    return rng.choice(
        [
            '{"type": "send", "content": ' + text + "}",
            '{"type": "send", "content": ' + text + "}",
            '{"type": "edit", "message_id": 0, "content": ' + text + "}",
            '{"type": ' + text + "}",
            '{"type": "compare", "content": ' + text + ', "models": [' + text + ", " + text + "]}",
            '{"type": "send", "content": "hi", "options": {' + text + ": 1}}",
            '{"type": "send", "content": "hi", "options": {"seed": ' + text + "}}",
        ]
    )


def nul(rng, _):
    text = rng.choice(['"\\u0000"', '"a\\u0000b"', '"hello\\u0000 world \\u0000"', '"\\u0000\\u0000\\u0000 x"'])
    return rng.choice(
        [
            '{"type": "send", "content": ' + text + "}",
            '{"type": "send", "content": ' + text + "}",
            '{"type": "edit", "message_id": 0, "content": ' + text + "}",
            '{"type": ' + text + "}",
            '{"type": "compare", "content": ' + text + ', "models": [' + text + ", " + text + "]}",
            '{"type": "send", "content": "hi", "options": {' + text + ": 1}}",
        ]
    )


def huge_number(rng, _):
    number = rng.choice(HUGE)
    return rng.choice(
        [
            '{"type": "send", "content": "hi", "options": {' + q(rng.choice(OPTIONS)) + ": " + number + "}}",
            '{"type": ' + rng.choice(['"regenerate"', '"continue"']) + ', "message_id": ' + number + "}",
            '{"type": "edit", "content": "hi", "message_id": ' + number + "}",
            '{"type": "send", "content": ' + number + "}",
            '{"type": ' + number + "}",
            '{"type": "compare", "content": "hi", "models": [' + number + ", " + number + "]}",
        ]
    )


def wrong_type(rng, _):
    value = rng.choice(WRONG)
    kind = q(rng.choice([*TURNS, "stop", "sync"]))
    return rng.choice(
        [
            '{"type": ' + value + "}",
            '{"type": ' + kind + ', "content": ' + value + "}",
            '{"type": ' + kind + ', "content": "hi", "options": ' + value + "}",
            '{"type": ' + kind + ', "content": "hi", "options": {' + q(rng.choice(OPTIONS)) + ": " + value + "}}",
            '{"type": ' + kind + ', "content": "hi", "message_id": ' + value + "}",
            '{"type": "compare", "content": "hi", "models": ' + value + "}",
            '{"type": "compare", "content": "hi", "models": [' + value + ", " + value + "]}",
        ]
    )


def big_string(rng, _):
    size = rng.choice([1_000_000, MiB + 10])  # under and over daphne's 1 MiB frame limit, with the JSON around it
    char = rng.choice(["a", "é", "\u20ac", "😀", " "])
    big = '"' + char * (size // len(char.encode())) + '"'  # written as UTF-8: `size` bytes
    return rng.choice(
        [
            '{"type": "send", "content": ' + big + "}",
            '{"type": ' + big + "}",
            '{"type": "stop", "junk": ' + big + "}",
            '{"type": "send", "content": "hi", "options": {' + big + ": 1}}",
            '{"type": "compare", "content": "hi", "models": [' + big + ', "x"]}',
        ]
    )


def unknown_type(rng, _):
    kind = rng.choice(
        [
            "hello",
            "",
            "SEND",
            " send",
            "send\n",
            "Stop",
            "Sync",
            "chat.frame",
            "chat_frame",
            "reply.stop",
            "reply_stop",
            "websocket.disconnect",
            "websocket.receive",
            "__class__",
            "__init__",
            "receive",
            "dispatch",
            "connect",
            "disconnect",
            "close",
            "send_json",
            "\u0441end",
            "x" * 300,
        ]
    )
    return '{"type": ' + q(kind) + ', "content": "hi", "message_id": 1}'


def message_id(rng, _):
    number = rng.choice(
        [-1, 0, -(2**31), 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 2**70, 10**30, 99_999_999, 10**100]
    )
    kind = rng.choice(["regenerate", "continue", "edit"])
    return '{"type": ' + q(kind) + ', "content": "hi", "message_id": ' + str(number) + "}"


def binary(rng, _):
    return rng.choice(
        [
            bytes(rng.randrange(256) for _ in range(rng.randrange(0, 512))),
            b"",
            b'{"type": "send", "content": "hi"}',
            b'{"type": "stop"}',
            b"\xff\xfe\x00\x00",
        ]
    )


def other_user(rng, others):
    kind = rng.choice(["regenerate", "continue", "edit"])
    return '{"type": ' + q(kind) + ', "content": "mine now", "message_id": ' + str(rng.choice(others)) + "}"


CATEGORIES = {  # generator, weight
    "bad_json": (bad_json, 10),
    "deep_nesting": (deep_nesting, 10),
    "surrogate": (surrogate, 10),
    "nul": (nul, 10),
    "huge_number": (huge_number, 10),
    "wrong_type": (wrong_type, 10),
    "big_string": (big_string, 3),
    "unknown_type": (unknown_type, 10),
    "message_id": (message_id, 10),
    "binary": (binary, 10),
    "other_user": (other_user, 10),
}


def frame(seed, index, others, categories):
    rng = random.Random(f"{seed}-{index}")
    category = rng.choices(categories, weights=[CATEGORIES[c][1] for c in categories])[0]
    return category, CATEGORIES[category][0](rng, others)


# --- sockets --------------------------------------------------------------------------------------


async def exchange(ws, payload, timeout):
    """Send one frame; what came back first: error:<code>, close:<code>, timeout, turn:<reply status>,
    or answer:<type> (another answer, with no reply started: `sync` answers with a `path` frame)."""
    import websockets

    try:
        await ws.send(payload)
        answer = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if answer.get("type") == "error":
            return f"error:{answer.get('code')}"
        return await follow(ws, answer, timeout)
    except TimeoutError:
        return "timeout"
    except websockets.ConnectionClosed as exc:
        return f"close:{exc.rcvd.code if exc.rcvd else 'none (1006)'}"


async def follow(ws, first, quiet):
    """Read what else the frame brought: a reply started (read to its `done`, at most 30 s), or
    nothing more within `quiet` seconds."""
    pending, started, ended, answer = set(), False, time.monotonic() + 30, first
    while True:
        if answer.get("type") == "chunk" or (answer.get("type") == "message" and answer.get("status") == "streaming"):
            pending.add(answer["message_id"])
            started = True
        if answer.get("type") == "done":
            pending.discard(answer["message_id"])
            if not pending:
                return f"turn:{answer.get('status')}"
        wait = ended - time.monotonic() if started else quiet
        try:
            answer = json.loads(await asyncio.wait_for(ws.recv(), max(wait, 0.001)))
        except TimeoutError:
            return "turn:unfinished after 30 s" if started else f"answer:{first.get('type')}"


class Fuzzer:
    def __init__(self, args, live, spec, users, others):
        self.args, self.live, self.spec, self.users, self.others = args, live, spec, users, others
        self.tally = defaultdict(Counter)  # category -> outcome -> frames
        self.reopened = self.created_during_run = 0
        self.categories = args.categories.split(",") if args.categories else list(CATEGORIES)
        self.pool = self.conversations()

    def conversations(self):
        """Conversations made before the servers start, a quarter of each socket's frames (a socket
        reopens on a new one): the bench's own writes then do not race the server's on SQLite."""
        from conversations.models import Conversation

        count = self.args.frames // self.args.sockets // 4 + 2
        return [
            [
                c.pk
                for c in Conversation.objects.bulk_create(
                    Conversation(owner=user, model=self.spec) for _ in range(count)
                )
            ]
            for user, _ in self.users
        ]

    async def open(self, worker):
        import websockets
        from asgiref.sync import sync_to_async

        from conversations.models import Conversation

        user, cookie = self.users[worker]
        if self.pool[worker]:
            pk = self.pool[worker].pop()
        else:
            pk = (await sync_to_async(Conversation.objects.create)(owner=user, model=self.spec)).pk
            self.created_during_run += 1
        return await websockets.connect(
            self.live.url(worker, f"/ws/conversations/{pk}/"),
            additional_headers=self.live.headers(worker, cookie),
            max_size=32 * MiB,
            open_timeout=30,
        )

    async def worker(self, worker, deadline):
        import websockets

        ws = None
        for index in range(worker, self.args.frames, self.args.sockets):
            category, payload = frame(self.args.seed, index, self.others, self.categories)
            if time.monotonic() > deadline:
                self.tally[category]["not sent (time bound)"] += 1
                continue
            if ws is None:
                try:
                    ws = await self.open(worker)
                except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
                    self.tally[category][f"not sent (no socket: {type(exc).__name__})"] += 1
                    continue
                self.reopened += 1
            outcome = await exchange(ws, payload, self.args.answer_timeout)
            self.tally[category][outcome] += 1
            if not outcome.startswith(("error:", "turn:complete", "answer:")):  # a late answer must not count next
                await ws.close()
                ws = None
        if ws is not None:
            await ws.close()

    async def run(self):
        deadline = time.monotonic() + self.args.max_seconds
        await asyncio.gather(*(self.worker(w, deadline) for w in range(self.args.sockets)))


async def handshakes(live, cookie, own, theirs):
    """The HTTP status of each bad (and one good) handshake, on every server process."""
    import websockets

    cases = [  # (label, path, session cookie, Origin)
        ("unknown path /ws/nope/", "/ws/nope/", cookie, None),
        ("non-numeric id", "/ws/conversations/abc/", cookie, None),
        ("20-digit id", "/ws/conversations/99999999999999999999/", cookie, None),
        ("negative id", "/ws/conversations/-1/", cookie, None),
        ("id 0", "/ws/conversations/0/", cookie, None),
        ("another user's conversation", f"/ws/conversations/{theirs}/", cookie, None),
        ("own conversation, no trailing slash", f"/ws/conversations/{own}", cookie, None),
        ("/ws/", "/ws/", cookie, None),
        ("/", "/", cookie, None),
        ("%00 id", "/ws/conversations/%00/", cookie, None),
        ("own conversation, no session", f"/ws/conversations/{own}/", None, None),
        ("own conversation, forged session", f"/ws/conversations/{own}/", "x" * 32, None),
        ("own conversation, foreign Origin", f"/ws/conversations/{own}/", cookie, "http://evil.example"),
        ("own conversation (good)", f"/ws/conversations/{own}/", cookie, None),
    ]
    statuses = {}
    for index in range(len(live.ports)):
        for label, path, session, origin in cases:
            headers = {**live.headers(index, session), **({"Origin": origin} if origin else {})}
            try:
                async with websockets.connect(live.url(index, path), additional_headers=headers, open_timeout=10):
                    status = 101
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
            except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
                status = type(exc).__name__
            statuses[f"server{index}: {label}"] = status
    return statuses


def victim(spec):
    """Another user's conversation: a question and an answer cut by the token limit (so it could be continued)."""
    from django.contrib.auth import get_user_model

    from conversations.models import Conversation, Message

    owner = get_user_model().objects.create(username="fuzz-victim")
    conversation = Conversation.objects.create(owner=owner, model=spec)
    question = conversation.add_user_message("the victim's question")
    answer = conversation.messages.create(
        role=Message.Role.ASSISTANT,
        status=Message.Status.COMPLETE,
        content="the victim's answer",
        parent=question,
        finish_reason="length",
    )
    return conversation.pk, [question.pk, answer.pk]


def measure(args):
    env = {"CHAT_ORPHAN_GRACE_SECONDS": "2"}
    if not args.rate_limits:  # fuzzing is not flooding: 8 sockets send far faster than the limits allow
        env.update(
            {f"CHAT_{who}_FRAMES_{what}": "1000000" for who in ("SOCKET", "USER") for what in ("PER_SECOND", "BURST")}
        )
    with Live(args, "fuzz", redis_db=7, env=env) as live:
        spec = live.model()
        theirs, others = victim(spec)
        users = live.users(args.sockets, "fuzz")
        fuzzer = Fuzzer(args, live, spec, users, others)
        live.serve()
        live.warm_up()
        print(
            f"{args.frames} frames over {args.sockets} sockets on {len(live.ports)} process(es), model {args.model}",
            flush=True,
        )
        started = time.monotonic()
        asyncio.run(fuzzer.run())
        seconds = time.monotonic() - started
        own = users[0][0].conversations.first().pk
        statuses = asyncio.run(handshakes(live, users[0][1], own, theirs))
        finals = live.turn_on_each("after-fuzz", "Hello after the fuzz", {}, timeout=60)
        tally = {category: dict(fuzzer.tally[category].most_common()) for category in fuzzer.categories}
        outcomes = Counter()
        for counts in fuzzer.tally.values():
            outcomes.update(counts)
        return {
            "what": f"{args.frames} malformed frames (seed {args.seed}) over {args.sockets} sockets, bad handshakes, "
            "then a normal chat turn per server process",
            **live.describe(),
            "frames": args.frames,
            "seed": args.seed,
            "sockets": args.sockets,
            "rate_limits": "server defaults" if args.rate_limits else "lifted",
            "answer_timeout_s": args.answer_timeout,
            "seconds": round(seconds, 1),
            "sockets_opened": fuzzer.reopened,
            "conversations_created_during_run": fuzzer.created_during_run,
            "by_category": tally,
            "handshake_status": statuses,
            "final_turns": finals,
            "answered_by_error": sum(n for o, n in outcomes.items() if o.startswith("error:")),
            "taken_as_turn": sum(n for o, n in outcomes.items() if o.startswith("turn:")),
            "answered_otherwise": sum(n for o, n in outcomes.items() if o.startswith("answer:")),
            "unanswered": outcomes["timeout"],
            "closed": sum(n for o, n in outcomes.items() if o.startswith("close:")),
            "not_sent": sum(n for o, n in outcomes.items() if o.startswith("not sent")),
            "server_tracebacks": live.tracebacks(),
        }


def key_lines(figures):
    lines = [f"{category}: {json.dumps(counts)}" for category, counts in figures["by_category"].items()]
    by_status = defaultdict(list)  # HTTP status -> the cases that got it (on any server process)
    for case, status in figures["handshake_status"].items():
        label = case.split(": ", 1)[1]
        if label not in by_status[str(status)]:
            by_status[str(status)].append(label)
    lines += [
        f"handshakes by HTTP status: {json.dumps(by_status)}",
        f"fuzz_final_turns={','.join(figures['final_turns'])} fuzz_not_sent={figures['not_sent']}",
        f"fuzz_tracebacks={figures['server_tracebacks']['count']}",
        f"fuzz_unanswered={figures['unanswered']}",
        f"fuzz_closed={figures['closed']}",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(run_backends(parse_args(), "fuzz", measure, key_lines))
