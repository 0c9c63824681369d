"""Template filters of the chat pages."""

from django import template
from django.utils.safestring import SafeString

from feedback.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """Model output as sanitised HTML (Markdown, raw HTML off, then nh3)."""
    return render_markdown(text or "")
