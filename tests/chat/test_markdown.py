"""Assistant markdown is rendered, highlighted and sanitized; nothing a model writes can run. A finished
answer is rendered once and its HTML stored (with the renderer's name): pages show the stored HTML, and
render again (and store) only what another renderer made."""

import pytest

from conversations.chat.markdown import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, RENDERER, render_markdown
from conversations.models import Message
from tests.factories import add_reply
from tests.markup import HOSTILE, Elements


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_markdown_renders_nothing_that_runs_or_loads(payload):
    for tag, attrs in Elements(render_markdown(payload)).found:
        assert tag in ALLOWED_TAGS
        assert not [name for name in attrs if name.startswith("on") or name in ("style", "src")]
        if "href" in attrs:
            assert attrs["href"].startswith(("http://", "https://", "mailto:"))


def test_links_get_noopener_noreferrer_nofollow():
    html = render_markdown("[docs](https://example.com/a)")
    assert '<a href="https://example.com/a" rel="noopener noreferrer nofollow">docs</a>' in html


def test_images_become_links_so_nothing_loads_by_itself():
    html = render_markdown("![a cat](https://img.example/cat.png)")
    assert "<img" not in html
    assert '<a href="https://img.example/cat.png" rel="noopener noreferrer nofollow">[image: a cat]</a>' in html


def test_fenced_code_is_highlighted_and_escaped():
    html = render_markdown("```python\nif a < b:\n    print('<b>')\n```")
    assert 'class="code-block" data-language="python"' in html
    assert '<span class="k">if</span>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_common_markdown_renders():
    html = render_markdown("# Title\n\n**bold** _it_ ~~gone~~\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    for fragment in [
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<em>it</em>",
        "<s>gone</s>",
        "<li>one</li>",
        "<td>1</td>",
    ]:
        assert fragment in html


def test_table_alignment_becomes_a_class_not_an_inline_style_the_policy_would_block():
    html = render_markdown("| l | c | r | n |\n|:--|:-:|--:|---|\n| 1 | 2 | 3 | 4 |")
    aligned = [{"class": "align-left"}, {"class": "align-center"}, {"class": "align-right"}, {}]
    cells = [(tag, attrs) for tag, attrs in Elements(html).found if tag in ("th", "td")]
    assert cells == [("th", attrs) for attrs in aligned] + [("td", attrs) for attrs in aligned]
    assert "style=" not in html and not [tag for tag, names in ALLOWED_ATTRIBUTES.items() if "style" in names]


def test_the_page_renders_finished_replies_as_markdown_and_user_text_as_text(owner_client, conversation):
    conversation.add_user_message("**not bold** <b>raw</b>")
    add_reply(conversation, "**bold** <script>x()</script>")
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "**not bold** &lt;b&gt;raw&lt;/b&gt;" in page
    assert "<strong>bold</strong>" in page and "<script>x()" not in page


def test_an_answer_is_rendered_once_and_the_page_shows_what_was_stored(owner_client, conversation):
    conversation.add_user_message("hi")
    reply = add_reply(conversation, "**bold** and *reasoned*", reasoning="a _thought_")
    owner_client.get(conversation.get_absolute_url())  # the first view renders it and stores it
    reply.refresh_from_db()
    assert reply.rendered_with == RENDERER and reply.html == render_markdown(reply.content)
    assert reply.reasoning_html == render_markdown("a _thought_")

    Message.objects.filter(pk=reply.pk).update(html="<p>as stored</p>")  # what a later view shows
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "<p>as stored</p>" in page and "<strong>bold</strong>" not in page


def test_answers_another_renderer_made_are_rendered_again_and_stored(owner_client, conversation):
    conversation.add_user_message("hi")
    reply = add_reply(conversation, "**bold**")
    Message.objects.filter(pk=reply.pk).update(html="<p>old</p>", rendered_with="chatsite-md-0")

    page = owner_client.get(conversation.get_absolute_url()).content.decode()

    assert "<strong>bold</strong>" in page and "<p>old</p>" not in page
    reply.refresh_from_db()
    assert (reply.html, reply.rendered_with) == (render_markdown("**bold**"), RENDERER)


@pytest.mark.django_db(transaction=True)
async def test_a_reply_is_rendered_and_stored_when_it_finishes(owner, conversation):
    from tests.sockets import frames_until, messages_of, open_socket, scripted

    await scripted(["**done**"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi"})
    done = (await frames_until(socket, "done"))[-1]
    await socket.disconnect()

    _, reply = await messages_of(conversation)
    assert (reply.html, reply.rendered_with) == ("<p><strong>done</strong></p>\n", RENDERER)
    assert reply.html in done["html"]
