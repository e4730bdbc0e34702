"""The running rows' keys and values, in buffers allocated ahead and written in place.

Every decode step adds one key and one value per row and layer. transformers'
`DynamicCache` appends them with `torch.cat`, which copies the whole cache of every
layer at every step: on a 30-layer model with a few hundred tokens a row, that copy
costs more than the step's attention. Here each layer's keys and values live in one
buffer per layer, [row slots, kv heads, columns, head dim], with room to grow:

- all rows end at the same column (`end`): a step writes column `end` of every row
  and moves `end` on; nothing is copied;
- a row's real tokens are right-aligned, so a shorter row has padding on its left,
  hidden by the attention mask (`mask`, 1 for a real token); the columns the model
  sees are `start:end`, where `start` is the first column any row uses;
- a row that leaves is replaced by the last row (one row copied), and `start` moves
  right past the columns no remaining row uses (nothing is copied);
- a row that joins is written right-aligned into a free slot; only a row longer
  than every running one, or a batch out of columns or slots, makes new buffers
  (doubling, so their cost is spread over many steps).

Buffers start as zeros and only ever hold finite keys and values: a masked column
gets weight zero in attention, and zero times a stale but finite value adds nothing.
The buffers are dropped when the last row leaves, so an idle model holds no cache.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _Span:
    """Where the live part of the buffers is: rows [0, rows), columns [start, end)."""

    rows = start = end = 0


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values for every row: what the model's attention reads and writes."""

    is_sliding = False
    is_compileable = False

    def __init__(self, keys, values, span):
        super().__init__()
        self.buffers, self.span = (keys, values), span
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.view()

    def view(self, end=None):
        """Point `keys` and `values` at the live rows' columns from `start` to `end` (the span's, by default)."""
        rows, start, end = self.span.rows, self.span.start, self.span.end if end is None else end
        self.keys = self.buffers[0][:rows, :, start:end]
        self.values = self.buffers[1][:rows, :, start:end]

    def lazy_initialization(self, key_states, value_states):  # the buffers exist before the first step
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        """Write this step's keys and values at column `end` (in place); the columns attention reads."""
        rows, at, end = self.span.rows, self.span.end, self.span.end + key_states.shape[-2]
        self.buffers[0][:rows, :, at:end] = key_states
        self.buffers[1][:rows, :, at:end] = value_states
        self.view(end)
        return self.keys, self.values

    def get_seq_length(self):
        return self.span.end - self.span.start

    def get_mask_sizes(self, query_length):
        return self.get_seq_length() + query_length, 0

    def get_max_length(self):
        return -1


class Batch:
    """The running sequences: row i of every layer's buffers and of `mask` is rows[i]'s."""

    def __init__(self, spare_columns=256):
        self.rows = []
        self.spare_columns = spare_columns  # columns allocated beyond the longest row when buffers are made
        self.cache = None  # a transformers `Cache` of SlotLayers while any row runs
        self.peak = 0  # the most rows ever decoded together
        self._span = _Span()
        self._mask = None  # [row slots, columns] buffer; `mask` is its live part

    @property
    def mask(self):
        """[rows, columns]: 1 for a real token, 0 for left padding (None when no row runs)."""
        if self._mask is None:
            return None
        span = self._span
        return self._mask[: span.rows, span.start : span.end]

    def add(self, seq):
        """Move a prefilled sequence's own cache (a DynamicCache of `seq.fed` tokens) in as the last row.

        If that fails (out of memory, say), the batch is left as it was: the others run on."""
        layers = [(lay.keys, lay.values) for lay in seq.cache.layers]
        n, span = seq.fed, self._span
        if self.cache is None or span.rows == self._mask.shape[0] or span.end < n:
            self._rebuild(layers, rows=span.rows + 1, length=max(span.end - span.start, n))
            span = self._span
        row, at = span.rows, span.end - n
        for lay, (keys, values) in zip(self.cache.layers, layers):
            lay.buffers[0][row, :, at : span.end] = keys[0]
            lay.buffers[1][row, :, at : span.end] = values[0]
        self._mask[row, : span.end] = 0
        self._mask[row, at : span.end] = 1
        span.rows, span.start = row + 1, min(span.start, at)
        self._views()
        self.rows.append(seq)
        self.peak = max(self.peak, len(self.rows))
        seq.cache = None

    def _rebuild(self, like, rows, length):
        """New buffers with slots for `rows` rows and `length` columns, and as much room again to grow.

        `like` gives each layer's (keys, values) shapes and types; the running rows are copied in,
        right-aligned at column `length`. Until the copy is done the batch is left as it was."""
        slots, columns = max(4, 2 * rows), length + max(self.spare_columns, length)
        made = [
            (
                keys.new_zeros(slots, keys.shape[1], columns, keys.shape[3]),
                values.new_zeros(slots, values.shape[1], columns, values.shape[3]),
            )
            for keys, values in like
        ]
        mask = torch.zeros(slots, columns, dtype=torch.long, device=made[0][0].device)
        span, new = self._span, _Span()
        live = span.end - span.start
        new.rows, new.start, new.end = span.rows, length - live, length
        if self.cache is not None:
            for (keys, values), lay in zip(made, self.cache.layers):
                keys[: span.rows, :, new.start : new.end] = lay.keys
                values[: span.rows, :, new.start : new.end] = lay.values
            mask[: span.rows, new.start : new.end] = self.mask
        self._span, self._mask = new, mask
        self.cache = Cache(layers=[SlotLayer(keys, values, new) for keys, values in made])

    def _views(self):
        for lay in self.cache.layers:
            lay.view()

    def clear(self):
        """Drop every row (after a failed step, whose keys and values may be half-written)."""
        self.rows, self.cache, self._mask, self._span = [], None, None, _Span()

    def remove(self, seq, copy=True):
        """Take a sequence's row out; with `copy`, return its keys and values (real tokens only)."""
        i, span = self.rows.index(seq), self._span
        real = int(self._mask[i, span.start : span.end].sum())
        layers = None
        if copy:
            layers = [
                (
                    lay.buffers[0][i : i + 1, :, span.end - real : span.end].clone(),
                    lay.buffers[1][i : i + 1, :, span.end - real : span.end].clone(),
                )
                for lay in self.cache.layers
            ]
        last = len(self.rows) - 1
        if last == 0:
            self.clear()
            return layers
        if i != last:  # the last row takes the leaving row's slot
            for lay in self.cache.layers:
                lay.buffers[0][i, :, span.start : span.end] = lay.buffers[0][last, :, span.start : span.end]
                lay.buffers[1][i, :, span.start : span.end] = lay.buffers[1][last, :, span.start : span.end]
            self._mask[i] = self._mask[last]  # (whole: a slot's mask is 0 outside its row's real tokens)
            self.rows[i] = self.rows[last]
        self.rows.pop()
        span.rows = last
        # Columns that are padding in every remaining row are left out of what attention reads.
        span.start = span.end - int(self.mask.sum(1).max())
        self._views()
        return layers

    def step(self, model, is_peft):
        """One decode step for every row: feed each its last token; the next-token logits, [rows, vocab]."""
        span = self._span
        if span.end == self._mask.shape[1]:  # out of columns: new buffers, twice the room
            self._rebuild([(lay.keys, lay.values) for lay in self.cache.layers], span.rows, span.end - span.start)
            span = self._span
        device = self._mask.device
        input_ids = torch.tensor([[seq.tokens[-1]] for seq in self.rows], device=device)
        positions = self.mask.sum(1, keepdim=True)  # each row's count of real tokens so far
        self._mask[: span.rows, span.end] = 1
        extra = {"adapter_names": [seq.adapter for seq in self.rows]} if is_peft else {}
        out = model(
            input_ids=input_ids,
            attention_mask=self._mask[: span.rows, span.start : span.end + 1],
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        span.end += 1
        return out.logits[:, -1]
