from django import template
from django.utils.safestring import mark_safe

from conversations.markdown import render_markdown

register = template.Library()


@register.filter
def markdown(text):
    """Render an assistant reply's markdown as sanitized HTML (see conversations/markdown.py)."""
    return mark_safe(render_markdown(text))  # noqa: S308 - nh3 allow-list sanitized
