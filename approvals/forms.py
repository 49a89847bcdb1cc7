"""Forms of the inbox. They check the shape of the input; the rules (who may decide, whether a
rejection needs a comment, delegation dates) live in ``approvals.services``."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.utils import timezone

from orchestration.definitions import registry

from .comments import MAX_BODY, MAX_KEY
from .models import Outcome
from .services import MAX_COMMENT

PAGE_SIZE = 25
BULK_LIMIT = 100  # requests one bulk decision may touch

STATE_CHOICES = [
    ("pending", "Pending"),
    ("decided", "Decided by me"),
    ("all", "All I can see"),
]
SORT_CHOICES = [
    ("newest", "Newest first"),
    ("due", "Due soonest"),
]


class InboxFilterForm(forms.Form):
    """The list's query string. Bad values fall back to the defaults instead of failing."""

    state = forms.ChoiceField(choices=STATE_CHOICES, required=False)
    workflow = forms.ChoiceField(required=False)
    q = forms.CharField(required=False, max_length=200, strip=True, label="Business key")
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False)
    after = forms.CharField(required=False, max_length=100)
    before = forms.CharField(required=False, max_length=100)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only workflows that ask people anything (any version).
        names = sorted(
            {
                wf.name
                for wf in registry.all()
                if any(spec.kind == "approval" for spec in wf.steps.values())
            }
        )
        self.fields["workflow"].choices = [("", "All workflows"), *[(n, n) for n in names]]

    def values(self) -> dict[str, str]:
        """The cleaned filters, with defaults for anything missing or invalid."""
        self.is_valid()  # cleaned_data keeps the valid fields of a partly invalid form
        data = self.cleaned_data
        q = (data.get("q") or "").replace("\x00", "")
        return {
            "state": data.get("state") or "pending",
            "workflow": data.get("workflow") or "",
            "q": q,
            "sort": data.get("sort") or "newest",
            "after": data.get("after") or "",
            "before": data.get("before") or "",
        }


class DecisionForm(forms.Form):
    outcome = forms.ChoiceField(choices=Outcome.choices)
    comment = forms.CharField(
        required=False,
        max_length=MAX_COMMENT,
        widget=forms.Textarea(attrs={"rows": 3}),
    )


class CommentForm(forms.Form):
    """A comment on a request's thread. ``key`` is drawn when the page is rendered, so a
    double-submitted form posts one comment (the service checks the body and the key again).
    Attachments (issue 12 item 5) add a file field here and a file input to
    ``inbox/_comments.html``; the form is already sent as multipart."""

    body = forms.CharField(
        label="Comment",
        max_length=MAX_BODY,
        widget=forms.Textarea(attrs={"rows": 3, "maxlength": MAX_BODY}),
        error_messages={"required": "The comment is empty: write something."},
    )
    key = forms.CharField(required=False, max_length=MAX_KEY, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("key", secrets.token_urlsafe(18))


class IdListField(forms.Field):
    """Several positive integer ids from checkboxes of the same name."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: Any) -> list[int]:
        ids = []
        for item in value or []:
            try:
                number = int(item)
            except (TypeError, ValueError):
                raise forms.ValidationError("Invalid request id.") from None
            if not 0 < number < 2**63:
                raise forms.ValidationError("Invalid request id.")
            ids.append(number)
        return list(dict.fromkeys(ids))

    def validate(self, value: list[int]) -> None:
        if self.required and not value:
            raise forms.ValidationError("Select at least one request.", code="required")
        if len(value) > BULK_LIMIT:
            raise forms.ValidationError(f"Select at most {BULK_LIMIT} requests at a time.")


class BulkDecisionForm(forms.Form):
    outcome = forms.ChoiceField(choices=Outcome.choices)
    ids = IdListField()
    comment = forms.CharField(required=False, max_length=MAX_COMMENT, widget=forms.Textarea)
    next = forms.CharField(required=False, max_length=2000)


def _local_input(value: datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%dT%H:%M")


def _local_widget() -> forms.DateTimeInput:
    # <input type="datetime-local"> wants "2026-05-04T09:30"; times are in TIME_ZONE.
    return forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class DelegationForm(forms.Form):
    delegate = forms.CharField(max_length=150, label="Delegate (username)")
    starts_at = forms.DateTimeField(label="From", widget=_local_widget())
    ends_at = forms.DateTimeField(label="Until", widget=_local_widget())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            now = timezone.now().replace(second=0, microsecond=0)
            self.initial.setdefault("starts_at", _local_input(now))
            self.initial.setdefault("ends_at", _local_input(now + timedelta(days=7)))

    def clean_delegate(self) -> Any:
        name = self.cleaned_data["delegate"].strip()
        delegate = get_user_model().objects.filter(username=name, is_active=True).first()
        if delegate is None:
            raise forms.ValidationError(f"No active user named “{name}”.")
        return delegate
