"""What integrations hold of a subject, for ``signoff erase`` and retention (hooks registered
with the engine, which imports no app): outbound mail (subject and bodies are rendered from
masked titles and fields, but may quote comments or rows written before that) and webhook
deliveries (copies of event data, which go altogether)."""

from __future__ import annotations

from typing import Any

from orchestration.retention import Erasure, register_delete_hook, register_erase_hook

from .models import OutboundEmail, WebhookDelivery

SUBJECT_LENGTH = OutboundEmail._meta.get_field("subject").max_length
TEXT_FIELDS = ("subject", "body_text", "body_html", "last_error")


def erase_outbound(erasure: Erasure) -> int:
    """Mask every copy of the instance's sealed values in its mail and delete its webhook
    deliveries; returns how many copies and deliveries went."""
    copies = 0
    scrubber = erasure.scrubber
    if scrubber:
        mails = OutboundEmail.objects.select_for_update().filter(instance_id=erasure.instance_id)
        for mail in mails:
            changed = []
            for name in TEXT_FIELDS:
                value, n = scrubber.text(getattr(mail, name))
                if n:
                    setattr(mail, name, value)
                    changed.append(name)
                    copies += n
            context, n = scrubber.json(mail.render_context)
            if n:
                mail.render_context = context
                changed.append("render_context")
                copies += n
            if changed:
                mail.subject = mail.subject[:SUBJECT_LENGTH]
                mail.save(update_fields=changed)
    deleted, _ = WebhookDelivery.objects.filter(instance_id=erasure.instance_id).delete()
    return copies + deleted


def delete_outbound(instance_ids: list[Any]) -> int:
    """Delete the mail and webhook deliveries of instances about to be deleted (they refer to
    the instance by id, not by a foreign key)."""
    mails, _ = OutboundEmail.objects.filter(instance_id__in=instance_ids).delete()
    deliveries, _ = WebhookDelivery.objects.filter(instance_id__in=instance_ids).delete()
    return mails + deliveries


register_erase_hook("integrations", erase_outbound)
register_delete_hook("integrations", delete_outbound)
