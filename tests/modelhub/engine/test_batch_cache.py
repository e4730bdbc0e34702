"""The batch's preallocated keys and values (engine/batch.py): whatever joins, leaves or outgrows the
buffers, every row's next-token logits are the ones its sequence computes alone with transformers'
own DynamicCache, and a row that leaves hands back its real keys and values, no padding."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from modelhub.engine.batch import Batch


class Row:
    """A sequence as the batch sees it: its tokens, its prefilled cache (`fed` tokens), and its reference."""

    def __init__(self, model, ids):
        self.tokens, self.fed = list(ids), len(ids)
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), use_cache=True)
        self.cache = out.past_key_values
        self.alone = DynamicCache(ddp_cache_data=[(lay.keys.clone(), lay.values.clone()) for lay in self.cache.layers])
        self.adapter = None

    def reference(self, model):
        """The next-token logits of this row decoded alone (the last token fed, on its own cache)."""
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[self.tokens[-1]]]), past_key_values=self.alone, use_cache=True)
        return out.logits[0, -1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def step_and_check(batch, model):
    with torch.inference_mode():
        logits = batch.step(model, is_peft=False)
    for row, got in zip(batch.rows, logits):
        torch.testing.assert_close(got, row.reference(model), rtol=1e-4, atol=1e-5)
        row.tokens.append(int(got.argmax()))


def test_rows_joining_leaving_and_outgrowing_the_buffers_decode_as_they_would_alone(model):
    batch = Batch(spare_columns=4)  # so the buffers run out of columns within a few steps
    short, long, middle = Row(model, [1, 2, 3]), Row(model, list(range(5, 17))), Row(model, [7, 8, 9, 10, 11])
    batch.add(short)
    for _ in range(2):
        step_and_check(batch, model)
    batch.add(long)  # longer than every running row: new buffers, the short row copied right-aligned
    batch.add(middle)
    for _ in range(9):  # past the columns the buffers were made with
        step_and_check(batch, model)

    kept = batch.remove(long)  # the last row moves into its slot

    assert batch.rows == [short, middle]
    for mine, alone in zip(kept, long.alone.layers):
        torch.testing.assert_close(mine, (alone.keys, alone.values), rtol=1e-4, atol=1e-5)  # (computed in a batch)
    assert batch.mask.shape[1] == max(len(short.tokens), len(middle.tokens))  # columns no row uses are left out
    for _ in range(3):
        step_and_check(batch, model)
    batch.add(Row(model, [3, 1, 4, 1, 5]))  # into the freed slot, left of nothing: no new buffers needed
    for _ in range(3):
        step_and_check(batch, model)


def test_the_last_row_leaving_drops_the_buffers(model):
    batch = Batch()
    row = Row(model, [4, 5, 6])
    batch.add(row)
    step_and_check(batch, model)

    assert batch.remove(row, copy=False) is None
    assert (batch.rows, batch.cache, batch.mask) == ([], None, None)
    batch.add(Row(model, [6, 5]))
    step_and_check(batch, model)
