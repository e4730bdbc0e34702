"""A snapshot's dataset card (README.md), as a hub renders it: text users typed into an export's filters
reads as that text, and none of it becomes a tag, a link or an image. The card's facts and its loading
with `datasets` are test_export.py."""

import pytest
from huggingface_hub import DatasetCard
from markdown_it import MarkdownIt

from conversations.training_data.examples import Filters
from conversations.training_data.export import export_snapshot
from tests.markup import HOSTILE, Elements

CARD_ELEMENTS = {"h1", "h2", "p", "pre", "code", "ul", "li"}  # what the card's own Markdown makes


@pytest.fixture(autouse=True)
def datasets_dir(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"


class Rendered(Elements):
    """The elements of rendered HTML and its text, entities read as the characters they stand for."""

    def __init__(self, html):
        self.text = ""
        super().__init__(html)

    def handle_data(self, data):
        self.text += data


@pytest.mark.parametrize("payload", HOSTILE)
def test_filter_text_in_the_card_reads_as_typed_and_renders_no_tag_link_or_image(db, payload):
    snapshot = export_snapshot("sft", filters=Filters(model=payload, adapter=payload, tag=payload), eval_fraction=0)
    readme = (snapshot.folder / "README.md").read_text(encoding="utf-8")
    assert "<script" not in readme and "<img" not in readme and "](" not in readme
    card = DatasetCard.load(snapshot.folder / "README.md")  # the front matter still parses
    assert card.data.to_dict()["pretty_name"] == f"chatsite snapshot {snapshot.pk} (sft)"
    rendered = Rendered(MarkdownIt("commonmark").render(card.text))  # raw HTML on, as a hub's Markdown has it
    assert {tag for tag, _ in rendered.found} <= CARD_ELEMENTS
    typed = " ".join(payload.split())  # on one line in the card
    assert f"model {typed}, adapter {typed}, tag {typed}." in " ".join(rendered.text.split())
