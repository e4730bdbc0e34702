"""How much of the model's raw speed reaches a websocket client?

In one run, for the same prompt and the same number of new tokens (greedy, fixed
length), alternate rounds of
  raw: `model.generate` on the loaded model in this process, and
  websocket: a real client of a real daphne server (`chatsite.asgi`), from the
             send frame to the `done` frame: saving the user message, the
             generation task, the channel layer, JSON frames and the socket,
and compare median tokens/s. Writes bench/results/stream.json and prints
`stream_overhead_ratio=<websocket/raw>` last (target >= 0.95).

    .venv/bin/python bench/stream.py [--rounds 10] [--new-tokens 256] [--model-dir PATH]

Rounds alternate so that the machine's drift (this one's speed varies by 2x from
second to second) hits both sides alike; medians are compared.
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Hello! What did you do this weekend?"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--model-dir", default=str(ROOT / "modelhub" / "builtin" / "chitchat"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream.json"))
    return parser.parse_args()


def setup_django(var_dir):
    os.environ.update(
        CHATSITE_VAR_DIR=var_dir,
        SECRET_KEY="bench-only-secret-key-not-for-production-use-0123456789",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        HF_HUB_OFFLINE="1",
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port):
    """daphne on `port`; its log goes to server.log in the bench's var dir (read it when a round fails)."""
    log = open(Path(os.environ["CHATSITE_VAR_DIR"]) / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("daphne did not start")


def raw_round(loaded, prompt_ids, new_tokens):
    import torch

    ids = torch.tensor([prompt_ids], device=loaded.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    elapsed = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == new_tokens
    return new_tokens / elapsed, elapsed


async def websocket_round(port, cookie, conversation_id, new_tokens):
    import websockets

    options = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True, "repetition_penalty": 1.0}
    url = f"ws://127.0.0.1:{port}/ws/conversations/{conversation_id}/"
    headers = {"Cookie": f"sessionid={cookie}", "Origin": f"http://127.0.0.1:{port}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "send", "content": PROMPT, "options": options}))
        first = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "chunk" and first is None:
                first = time.perf_counter() - started
            if frame["type"] == "error":
                raise SystemExit(f"server error: {frame}")
            if frame["type"] == "done":
                return time.perf_counter() - started, first, frame["message_id"]


def measure(args, loaded, prompt_ids, port, cookie, user, spec):
    """Alternate raw and websocket rounds; returns tokens/s lists and client times to first chunk."""
    from conversations.models import Conversation, Message

    for _ in range(2):  # warm up both paths at full length (the server also loads on first use)
        raw_round(loaded, prompt_ids, args.new_tokens)
        warm = Conversation.objects.create(owner=user, model=spec)
        asyncio.run(websocket_round(port, cookie, warm.pk, args.new_tokens))
    raw, ws, ttft = [], [], []
    for index in range(args.rounds):
        raw.append(raw_round(loaded, prompt_ids, args.new_tokens)[0])
        conversation = Conversation.objects.create(owner=user, model=spec)
        elapsed, first, message_id = asyncio.run(websocket_round(port, cookie, conversation.pk, args.new_tokens))
        reply = Message.objects.get(pk=message_id)
        assert reply.completion_tokens == args.new_tokens, reply.completion_tokens
        assert reply.prompt_tokens == len(prompt_ids)
        ws.append(args.new_tokens / elapsed)
        ttft.append(first)
        print(f"round {index + 1}: raw {raw[-1]:.1f} tok/s, websocket {ws[-1]:.1f} tok/s")
    return raw, ws, ttft


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as var_dir:
        setup_django(var_dir)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from modelhub.backends.loading import LoadSettings, load
        from modelhub.models import ModelSpec
        from modelhub.prompts import render_prompt

        spec = ModelSpec.objects.create(name="bench", source=args.model_dir, dtype="float32", device="auto")
        user = get_user_model().objects.create_user("bench", password="bench-pass-123")
        client = Client()
        client.force_login(user)
        loaded = load(LoadSettings(args.model_dir, dtype="float32", device="auto"))
        prompt_ids = render_prompt(loaded.tokenizer, [{"role": "user", "content": PROMPT}])
        port = free_port()
        server = start_server(port)
        try:
            raw, ws, ttft = measure(args, loaded, prompt_ids, port, client.cookies["sessionid"].value, user, spec)
        finally:
            server.terminate()
            server.wait(10)
    write_result(args, loaded, prompt_ids, raw, ws, ttft)


def write_result(args, loaded, prompt_ids, raw, ws, ttft):
    import torch

    ratio = statistics.median(ws) / statistics.median(raw)
    result = {
        "what": "median tokens/s of model.generate vs. a websocket client of daphne, same prompt, greedy, fixed length",
        "model_dir": os.path.relpath(args.model_dir, ROOT),
        "device": loaded.device,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "raw_tokens_per_s": [round(x, 2) for x in raw],
        "websocket_tokens_per_s": [round(x, 2) for x in ws],
        "websocket_time_to_first_chunk_s": [round(x, 4) for x in ttft],
        "raw_median": round(statistics.median(raw), 2),
        "websocket_median": round(statistics.median(ws), 2),
        "stream_overhead_ratio": round(ratio, 4),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"raw median {result['raw_median']} tok/s, websocket median {result['websocket_median']} tok/s")
    print(f"stream_overhead_ratio={ratio:.4f}")


if __name__ == "__main__":
    main()
