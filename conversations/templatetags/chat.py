from django import template
from django.utils.safestring import mark_safe

from conversations.chat.markdown import render_markdown

register = template.Library()


@register.filter
def markdown(text):
    """Render an assistant reply's markdown as sanitized HTML (see conversations/chat/markdown.py)."""
    return mark_safe(render_markdown(text))
