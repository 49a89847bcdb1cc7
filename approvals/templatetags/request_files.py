"""The files box of the request page (``templates/inbox/_attachments.html``)."""

from __future__ import annotations

from typing import Any

from django import template

from orchestration import attachments

from ..files import may_attach

register = template.Library()


@register.simple_tag(takes_context=True)
def request_files(context: template.Context, approval: Any) -> dict[str, Any]:
    """The instance's files (whoever sees the request may read them) and whether to offer the
    upload form: a constant number of queries, however many files."""
    user = context["request"].user
    return {
        "files": attachments.attachments_of(instance_id=approval.instance_id),
        "can_attach": may_attach(user, approval),
        **upload_limits(),
    }


@register.simple_tag
def upload_limits() -> dict[str, Any]:
    """What a file input says about what it takes (no query)."""
    return attachments.upload_limits()
