"""Rows held to a JSON schema in the step batch (modelhub/decoding/grammar.py, llguidance): on the real tiny
Llama, whose random weights would never write JSON by themselves, a held row writes JSON that validates,
whichever rows of the batch are held (neighbours or not), and the free rows beside them write exactly what
they write alone."""

import json

import jsonschema
import pytest

from tests.modelhub.engine.test_batching import alone
from tests.modelhub.served import PROMPTS, ask, read

SCHEMA = {
    "type": "object",
    "properties": {"mood": {"enum": ["good", "bad"]}, "word": {"type": "string", "maxLength": 6}},
    "required": ["mood", "word"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("held", [{0, 1}, {1, 3}, {0, 1, 2, 3}], ids=["neighbours", "apart", "all"])
def test_held_rows_write_valid_json_and_free_rows_write_what_they_write_alone(served, reference_models, held):
    prompts = PROMPTS[:4]
    requests = [
        served.start(ask(p), max_new_tokens=48, **({"response_format": FORMAT} if i in held else {}))
        for i, p in enumerate(prompts)
    ]
    served.open()

    texts = [read(r) for r in requests]

    assert served.backend.decoder.batch.peak == len(prompts)
    for i, (text, request) in enumerate(zip(texts, requests)):
        if i in held:
            jsonschema.validate(json.loads(text), SCHEMA)
            assert request.usage.finish_reason == "stop"
        else:
            assert text == alone(reference_models, ask(prompts[i]), max_new_tokens=48)
