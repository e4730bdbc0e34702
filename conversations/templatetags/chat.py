from django import template
from django.utils.safestring import mark_safe

from conversations.chat.markdown import html_of, render_markdown

register = template.Library()


@register.filter
def markdown(text):
    """Render an assistant reply's markdown as sanitized HTML (see conversations/chat/markdown.py)."""
    return mark_safe(render_markdown(text))


@register.filter
def answer_html(message):
    """A finished reply's answer as sanitized HTML, rendered once and stored (conversations/chat/markdown.py)."""
    return mark_safe(html_of(message)[0])


@register.filter
def reasoning_html(message):
    """A finished reply's reasoning as sanitized HTML, rendered with its answer."""
    return mark_safe(html_of(message)[1])
