"""Keys and values of finished replies, kept so the next turn skips re-reading its history.

Self-attention at step t needs the keys and values of every earlier token. A
conversation's next prompt is its previous prompt, the reply, and a new user
message, so most of those keys and values were already computed by the last
turn. When a reply ends, its sequence's cache (prompt + reply) is stored here
with the token ids it covers; a new prompt looks for the stored entry sharing the
longest token prefix with it and prefills only the rest. Matching by tokens, not
by conversation id, also covers regenerations, edits and branches, and is exact:
a reused key was computed from the very same tokens at the very same positions.

A prefix shorter than `min_tokens` (the chat template's opening, shared by every
conversation) is not worth copying: a new prompt is prefilled together with the
other new ones (engine/model_runner.py) faster than its few tokens are restored.

Entries are per adapter (a LoRA on the attention projections changes the keys),
bounded by a byte budget and evicted least recently used. Only the model's worker
thread touches this object.
"""

from collections import OrderedDict


def common_prefix(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    def __init__(self, budget_bytes, min_tokens=16):
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self.bytes = 0
        self._entries = OrderedDict()  # (adapter, token ids) -> per-layer (keys, values), oldest first
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self):
        return len(self._entries)

    def store(self, adapter, token_ids, layers):
        """Keep `layers` ([(keys, values)] of shape [1, heads, len(token_ids), dim]) for `token_ids`."""
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        key = (adapter, tuple(token_ids))
        if size > self.budget_bytes or not token_ids:
            return
        self._drop(key)
        # An entry that is a prefix of the new one can never be the better match again.
        for old in [k for k in self._entries if k[0] == adapter and k[1] == key[1][: len(k[1])]]:
            self._drop(old)
        self._entries[key] = (layers, size)
        self.bytes += size
        while self.bytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))

    def lookup(self, adapter, prompt_ids):
        """(n, layers cut to n tokens) for the longest stored prefix of `prompt_ids`, or (0, None)
        when there is none of at least `min_tokens`.

        At least one prompt token is always left to feed: its logits give the first new token.
        """
        best, best_len = None, 0
        for key in self._entries:
            if key[0] == adapter:
                n = common_prefix(key[1], prompt_ids)
                if n > best_len:
                    best, best_len = key, n
        best_len = min(best_len, len(prompt_ids) - 1)
        if best is None or best_len < max(1, self.min_tokens):
            return 0, None
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_len
        layers, _ = self._entries[best]
        return best_len, [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in layers]

    def forget(self, adapter):
        """Drop an adapter's entries (it was replaced or removed)."""
        for key in [k for k in self._entries if k[0] == adapter]:
            self._drop(key)

    def clear(self):
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key):
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]
