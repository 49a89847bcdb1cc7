"""The forms of the operator actions' confirm pages: reassign, decide on behalf, release or
take over a claim. They check the input's shape; the services and the decision policy decide."""

from __future__ import annotations

from typing import Any

from django import forms

from ..models import DECISIONS


def _names(value: str) -> list[str]:
    return sorted({part.strip() for part in value.replace("\n", ",").split(",") if part.strip()})


class ReassignForm(forms.Form):
    users = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Usernames, comma-separated. They replace the current assignees.",
    )
    groups = forms.CharField(
        required=False, max_length=2000, help_text="Group names, comma-separated."
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required; recorded on the approval_reassigned event.",
    )

    def clean_users(self) -> list[str]:
        return _names(self.cleaned_data["users"])

    def clean_groups(self) -> list[str]:
        return _names(self.cleaned_data["groups"])

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("users") and not data.get("groups") and not self.errors:
            raise forms.ValidationError("Name at least one user or group.")
        return data


class DecideOnBehalfForm(forms.Form):
    assignee = forms.ChoiceField(help_text="The assignee whose decision you record.")
    # Sending back for changes is the assignee's own act, never recorded on their behalf.
    outcome = forms.ChoiceField(
        choices=[(o.value, o.label) for o in DECISIONS], widget=forms.RadioSelect
    )
    comment = forms.CharField(
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="The assignee's words (required to reject when the request says so).",
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required: why you decide for them (e.g. “approved by phone, traveling”).",
    )

    def __init__(self, *args: Any, candidates: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].choices = [("", "—")] + [(n, n) for n in candidates]

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


class ClaimNoteForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Recorded on the event and shown to the claimant in the history.",
    )


class TakeOverClaimForm(ClaimNoteForm):
    note = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required: why you take the claim over (recorded).",
    )
