"""What a reply has written so far: its answer and, for a model that thinks before it answers, its
reasoning, kept apart (modelhub hands them as (part, text) pieces: `request.pieces()`), with the time
the thinking took ("Thought for N s").

Each piece becomes one `chunk` frame of its part, whose offset (UTF-16 units, as the browser counts)
is where it goes in that part's text. The reply task (replies.py) keeps one `Written` per reply.
"""

import time

from conversations.chat.frames import utf16_length
from conversations.models.message import storable
from modelhub.api import REASONING


class Written:
    def __init__(self, answer="", reasoning="", clock=time.monotonic):
        self.answer = answer  # empty, or the answer being continued
        self.reasoning = reasoning
        self.clock = clock
        self.thinking_since = self.thinking_until = None

    def add(self, part, text, message_id):
        """Take one piece; the chunk frame that carries it to the pages."""
        text = storable(text)
        if part == REASONING:
            if self.thinking_since is None:
                self.thinking_since = self.clock()
            offset = utf16_length(self.reasoning)
            self.reasoning += text
            return {"type": "chunk", "message_id": message_id, "part": "reasoning", "offset": offset, "text": text}
        if self.thinking_since is not None and self.thinking_until is None:
            self.thinking_until = self.clock()  # the answer began: the thinking is over
        offset = utf16_length(self.answer)
        self.answer += text
        return {"type": "chunk", "message_id": message_id, "offset": offset, "text": text}

    @property
    def thinking_seconds(self):
        """How long it thought (so far, if it still does); None for a reply without reasoning."""
        if self.thinking_since is None:
            return None
        return (self.thinking_until or self.clock()) - self.thinking_since
