"""Stop strings (`stop`, as in the OpenAI API): a reply ends before the first one it would contain.

A stop string may span several tokens, and so several chunks of text: a chunk that ends
with what could be the beginning of one ("\\n\\nUs" for "\\n\\nUser:") is not passed on yet.
`StopMatcher` sits between a reply's detokenizer and its caller: it passes text on once
no stop string can begin in it, cuts the text right before the first stop string found
(which is never passed on, not even in part), and releases what it held at the end of
a reply that ended otherwise. vLLM streams stop strings the same way (its stop buffer).

Plain text in, plain text out: the local engine's sequences (engine/model_runner.py) and scripted
replies (backends/local.py) use it; a remote server does its own stopping (remote.py).
"""


class StopMatcher:
    """The text of one reply, cut before its first stop string; `stopped` once one was found."""

    def __init__(self, stops=()):
        self.stops = tuple(stops)
        self.longest = max(map(len, self.stops), default=0)
        self.firsts = {stop[0] for stop in self.stops}
        self.held = ""  # the end of the text so far, while it could be the beginning of a stop string
        self.stopped = False

    def add(self, text):
        """The text that can be passed on, now that `text` follows what came before ('' after a stop)."""
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        text = self.held + text
        found = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.stopped, self.held = True, ""
            return text[: min(found)]
        keep = self._open_tail(text)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def _open_tail(self, text):
        """The length of the longest end of `text` that begins a stop string. Text before it begins
        none (nor contains one, or `add` would have found it): whatever follows, it can be passed on."""
        for at in range(max(0, len(text) - self.longest + 1), len(text)):
            if text[at] in self.firsts and any(stop.startswith(text[at:]) for stop in self.stops):
                return len(text) - at
        return 0

    def flush(self):
        """What is held back, once the reply ended without a stop string ('' after one)."""
        held, self.held = self.held, ""
        return held
