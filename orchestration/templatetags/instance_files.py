"""Template tags for an instance's files (status page, request page)."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from orchestration import attachments
from orchestration.errors import localize

register = template.Library()


@register.simple_tag
def instance_files(instance: Any) -> list[Any]:
    """The instance's files, oldest first (one query). Only on pages whose reader may read
    them (the status page's readers are a subset of the files' readers)."""
    return attachments.attachments_of(instance_id=instance.pk)


@register.filter
def file_context(context: str) -> str:
    """``request:12`` → "on request #12", and so on."""
    kind, _, ref = str(context).partition(":")
    if kind == "start":
        return "with the start"
    if kind == "request":
        return f"on request #{ref}"
    if kind == "comment":
        return "with a comment"
    if kind == "revision":
        return f"with resubmission {ref}"
    return str(context)


@register.filter
def file_type(content_type: str) -> str:
    return localize(attachments.type_label(content_type))


@register.filter
def file_links(value: Any) -> SafeString | None:
    """A list of files as an input field holds them (``show=`` naming the files' field), as
    download links with their sizes; None for anything else (show it as data)."""
    if not attachments.is_refs(value):
        return None
    return format_html_join(
        ", ",
        '<a href="{}" download>{}</a> <span class="muted small">({})</span>',
        (
            (
                reverse("instances:file", args=[item["id"]]),
                item["name"],
                (
                    localize(attachments.human_size(item["size"]))
                    if isinstance(item.get("size"), int)
                    else ""
                ),
            )
            for item in value
        ),
    ) or format_html("")
