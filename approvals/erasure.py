"""What approvals hold of a subject, for ``signoff erase`` and retention (hooks registered with
the engine, which imports no app): request titles and fields (masked when written; rows
written before that, and fields of custom ``title=`` functions, may quote a sealed value) and
people's decision comments and reasons, and the comments of request threads (free text, which
may quote anything)."""

from __future__ import annotations

from orchestration.retention import Erasure, register_erase_hook

from .models import ApprovalRequest, Comment, Decision

TITLE_LENGTH = ApprovalRequest._meta.get_field("title").max_length


def erase_requests(erasure: Erasure) -> int:
    """Mask every copy of the instance's sealed values in its requests and decisions; returns
    how many copies went."""
    scrubber = erasure.scrubber
    if not scrubber:
        return 0
    copies = 0
    requests = ApprovalRequest.objects.select_for_update(no_key=True).filter(
        instance_id=erasure.instance_id
    )
    for request in requests:
        title, n_title = scrubber.text(request.title)
        fields, n_fields = scrubber.json(request.fields)
        if n_title or n_fields:
            request.title, request.fields = title[:TITLE_LENGTH], fields
            request.refresh_search()  # the search text quotes the title and the fields
            request.save(update_fields=["title", "fields", "search_text", "columns"])
            copies += n_title + n_fields
    decisions = Decision.objects.select_for_update().filter(
        request__instance_id=erasure.instance_id
    )
    for decision in decisions:
        comment, n_comment = scrubber.text(decision.comment)
        reason, n_reason = scrubber.text(decision.reason)
        if n_comment or n_reason:
            decision.comment, decision.reason = comment, reason[:500]
            decision.save(update_fields=["comment", "reason"])
            copies += n_comment + n_reason
    return copies


def erase_comments(erasure: Erasure) -> int:
    """Mask every copy of the instance's sealed values in the comments of its requests'
    threads (their events never hold the text: nothing to erase there); returns how many
    copies went. The comments go with the instance when retention deletes it."""
    scrubber = erasure.scrubber
    if not scrubber:
        return 0
    copies = 0
    comments = Comment.objects.select_for_update(of=("self",)).filter(
        request__instance_id=erasure.instance_id
    )
    for comment in comments:
        body, n_body = scrubber.text(comment.body)
        if n_body:
            comment.body = body
            comment.save(update_fields=["body"])
            copies += n_body
    return copies


register_erase_hook("approvals", erase_requests)
register_erase_hook("approvals.comments", erase_comments)
