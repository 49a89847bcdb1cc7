"""Forms of the inbox. They check the shape of the input; the rules (who may decide, whether a
rejection needs a comment, delegation dates) live in ``approvals.services``."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from orchestration import attachments, sealing
from orchestration.definitions import registry
from orchestration.errors import localize
from orchestration.jsonsafe import storable_json_problem, too_deep
from orchestration.models import InstanceState

from .comments import MAX_BODY, MAX_KEY
from .inputs import MAX_COMMENT
from .models import ApprovalRequest, MailPreference, Outcome, time_zone_names

PAGE_SIZE = 25
BULK_LIMIT = 100  # requests one bulk decision may touch

STATE_CHOICES = [
    ("pending", _("Pending")),
    ("decided", _("Decided by me")),
    ("all", _("All I can see")),
]
SORT_CHOICES = [
    ("newest", _("Newest first")),
    ("due", _("Due soonest")),
]  # and col.<key> / -col.<key> for the columns a workflow marks (approvals.search)


class InboxFilterForm(forms.Form):
    """The list's query string. A bad tab, order or cursor falls back to the default; the
    search and the filters are kept as typed (for the page and its links) and checked by
    :func:`approvals.search.parse_filters`, which refuses bad ones with a 400."""

    state = forms.ChoiceField(choices=STATE_CHOICES, required=False)
    workflow = forms.ChoiceField(required=False)
    sort = forms.CharField(required=False, max_length=60)
    after = forms.CharField(required=False, max_length=200)
    before = forms.CharField(required=False, max_length=200)
    TYPED = ("q", "step", "requester", "overdue", "due_before")

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
        self.fields["workflow"].choices = [("", _("All workflows")), *[(n, n) for n in names]]

    def values(self) -> dict[str, str]:
        """The cleaned tab, workflow, order and cursors (defaults for anything missing or
        invalid) and the other filters as typed (NUL characters dropped, at most 1,000
        characters: enough to show a refused value)."""
        self.is_valid()  # cleaned_data keeps the valid fields of a partly invalid form
        data = self.cleaned_data
        typed = {
            name: str(self.data.get(name) or "").replace("\x00", "")[:1000] for name in self.TYPED
        }
        return {
            "state": data.get("state") or "pending",
            "workflow": data.get("workflow") or "",
            **typed,
            "sort": data.get("sort") or "newest",
            "after": data.get("after") or "",
            "before": data.get("before") or "",
        }


SEARCH_MAX = 200  # characters of a "My requests" search


class MyRequestsFilterForm(forms.Form):
    """The query string of "My requests". Unlike the inbox's, it does not fall back quietly:
    a search too long or holding NUL characters (PostgreSQL cannot compare text with them),
    or an unknown state, makes the page answer 400 with the message, never a 500."""

    state = forms.ChoiceField(
        choices=[("", _("Any state")), *InstanceState.choices], required=False
    )
    q = forms.CharField(
        required=False,
        max_length=SEARCH_MAX,
        strip=True,
        label=_("Search"),
        error_messages={
            "max_length": format_lazy(
                _("Search for at most {count} characters."), count=SEARCH_MAX
            ),
            "null_characters_not_allowed": _("The search cannot contain NUL characters."),
        },
    )
    # Cursors are opaque: one that does not parse gives the first page (the view decides).
    after = forms.CharField(required=False, max_length=100)
    before = forms.CharField(required=False, max_length=100)

    def values(self) -> dict[str, str]:
        """The cleaned filters (call after ``is_valid()``)."""
        data = self.cleaned_data
        return {name: data.get(name) or "" for name in ("state", "q", "after", "before")}


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
    Files posted with the comment come from the page's ``files`` input (the service checks
    them)."""

    body = forms.CharField(
        label=_("Comment"),
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
            raise forms.ValidationError(_("Select at least one request."), code="required")
        if len(value) > BULK_LIMIT:
            raise forms.ValidationError(f"Select at most {BULK_LIMIT} requests at a time.")


class BulkDecisionForm(forms.Form):
    outcome = forms.ChoiceField(choices=Outcome.choices)
    ids = IdListField()
    comment = forms.CharField(required=False, max_length=MAX_COMMENT, widget=forms.Textarea)
    next = forms.CharField(required=False, max_length=2000)

    def clean_outcome(self) -> str:
        outcome = self.cleaned_data["outcome"]
        if outcome == Outcome.REQUEST_CHANGES:
            raise forms.ValidationError(
                "Changes are requested one request at a time, with a comment for its "
                "requester: open the request and use “Request changes”."
            )
        return outcome


# -- revise and resubmit --------------------------------------------------------------------------

LONG_TEXT = 200  # strings allowed longer than this get a text area
MAX_JSON_TEXT = 100_000


class NumberField(forms.CharField):
    """A JSON number: an integer when written as one (``120``), else a float (``95.5``)."""

    def to_python(self, value: Any) -> int | float | None:
        text = super().to_python(value)
        if text in self.empty_values:
            return None
        if len(text) > 100:
            raise forms.ValidationError("Enter a number.")
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise forms.ValidationError("Enter a number.") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise forms.ValidationError("Enter a number.") from None
        return number


class ReviseForm(forms.Form):
    """The revisable fields of a request sent back for changes, prefilled with the instance's
    current input. Field types follow the workflow's ``input_schema`` (anything it does not
    describe as a scalar is edited as JSON). A sealed field is never shown: left empty it
    keeps its value. The service validates the whole input after the merge."""

    def __init__(self, approval: ApprovalRequest, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance = approval.instance
        definition = registry.get(instance.workflow, instance.version)
        schema = definition.input_schema if definition else None
        properties = (schema or {}).get("properties") or {}
        required = set((schema or {}).get("required") or [])
        sealed = sealing.input_fields(definition.sensitive) if definition else set()
        current = instance.input if isinstance(instance.input, dict) else {}
        self.current = current
        self.sealed_names: set[str] = set()
        # The workflow's files field, when revisable: files kept (ticked) and files added
        # (the page's ``files`` input, given to the service as uploads).
        self.files_name: str | None = None
        files_field = definition.attachments if definition else None
        for name in approval.revisable:
            prop = properties.get(name) if isinstance(properties.get(name), dict) else {}
            label = prop.get("title") or name.replace("_", " ").capitalize()
            if name == files_field:
                self.files_name = name
                self.fields[name] = _kept_files_field(current.get(name), label)
                if not self.is_bound:
                    self.initial[name] = [choice for choice, _ in self.fields[name].choices]
                continue
            if name in sealed:
                self.sealed_names.add(name)
                self.fields[name] = forms.CharField(
                    label=label,
                    required=False,
                    strip=False,
                    max_length=MAX_JSON_TEXT,
                    help_text="Sealed: its value is not shown. Leave empty to keep it.",
                    widget=forms.PasswordInput(render_value=False),
                )
                continue
            field = _field_for(prop, required=name in required)
            field.label = label
            field.help_text = prop.get("description", "")
            self.fields[name] = field
            if name in current and not self.is_bound:
                self.initial[name] = current[name]

    def changes(self) -> dict[str, Any]:
        """The submitted fields as input values (a sealed field left empty: unchanged)."""
        out: dict[str, Any] = {}
        for name, value in self.cleaned_data.items():
            if name == self.files_name:
                ticked = set(value or [])
                listed = [choice for choice, _ in self.fields[name].choices]
                if ticked != set(listed):  # a file unticked: off the input, kept on the instance
                    out[name] = [choice for choice in listed if choice in ticked]
                continue
            if name in self.sealed_names:
                if value == "":
                    continue
                # Typed as text: what the requester wrote is what is stored (the schema
                # then judges it).
                out[name] = value
                continue
            if value in (None, "") and name not in self.current:
                continue  # left empty and never set: not a change
            if value is None:
                continue  # an emptied number or JSON value keeps the current one
            out[name] = value
        return out


def _kept_files_field(value: Any, label: str) -> forms.Field:
    refs = value if attachments.is_refs(value) else []
    choices = [
        (
            item["id"],
            f"{item['name']} ({localize(attachments.human_size(item['size']))})"
            if isinstance(item.get("size"), int)
            else item["name"],
        )
        for item in refs
    ]
    return forms.MultipleChoiceField(
        label=label,
        choices=choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Untick a file to take it off the request; add new files below.",
    )


def _field_for(prop: dict[str, Any], *, required: bool) -> forms.Field:
    kind = prop.get("type")
    if isinstance(prop.get("enum"), list) and all(isinstance(v, str) for v in prop["enum"]):
        choices = [(v, v) for v in prop["enum"]]
        if not required:
            choices = [("", "—"), *choices]
        return forms.ChoiceField(choices=choices, required=required)
    if kind == "number":
        widget = forms.TextInput(attrs={"inputmode": "decimal"})
        return NumberField(required=required, widget=widget)
    if kind == "integer":
        return forms.IntegerField(required=required)
    if kind == "boolean":
        return forms.BooleanField(required=False)
    if kind == "string":
        limit = prop.get("maxLength") if isinstance(prop.get("maxLength"), int) else None
        widget = (
            forms.Textarea(attrs={"rows": 3})
            if limit is None or limit > LONG_TEXT
            else forms.TextInput()
        )
        return forms.CharField(
            required=required, max_length=limit or MAX_JSON_TEXT, widget=widget, strip=True
        )
    return StrictJSONField(required=required, widget=forms.Textarea(attrs={"rows": 4}))


class StrictJSONField(forms.JSONField):
    """JSON the engine may store (depth, size, valid text); no value shows empty."""

    def prepare_value(self, value: Any) -> Any:
        return "" if value is None else super().prepare_value(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_JSON_TEXT:
            raise forms.ValidationError(f"At most {MAX_JSON_TEXT} characters.")
        if isinstance(value, str) and too_deep(value):
            raise forms.ValidationError("The JSON is nested too deeply.")
        data = super().to_python(value)
        problem = storable_json_problem(data)
        if problem:
            raise forms.ValidationError(problem)
        return data


class WithdrawForm(forms.Form):
    reason = forms.CharField(
        required=False, max_length=500, widget=forms.Textarea(attrs={"rows": 2})
    )


def _local_input(value: datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%dT%H:%M")


def _local_widget() -> forms.DateTimeInput:
    # <input type="datetime-local"> wants "2026-05-04T09:30"; times are in TIME_ZONE.
    return forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class DelegationForm(forms.Form):
    delegate = forms.CharField(max_length=150, label=_("Delegate (username)"))
    starts_at = forms.DateTimeField(label=_("From"), widget=_local_widget())
    ends_at = forms.DateTimeField(label=_("Until"), widget=_local_widget())

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


class MailPreferenceForm(forms.Form):
    """Immediate mail or one daily digest, its hour and time zone (checked again by
    :func:`approvals.mail_preferences.mail_preference_set`)."""

    mode = forms.ChoiceField(choices=MailPreference.Mode.choices, widget=forms.RadioSelect)
    digest_hour = forms.TypedChoiceField(
        choices=[(h, f"{h:02d}:00") for h in range(24)], coerce=int, label=_("Digest at")
    )
    time_zone = forms.ChoiceField(
        choices=(),
        label=_("Time zone"),
        error_messages={"invalid_choice": _("Unknown time zone: choose one from the list.")},
    )
    language = forms.ChoiceField(
        choices=(),
        required=False,
        label=_("Language"),
        error_messages={"invalid_choice": _("Unknown language: choose one from the list.")},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["time_zone"].choices = [(z, z) for z in sorted(time_zone_names())]
        self.fields["language"].choices = [
            ("", _("As my browser asks")),
            *[(code, name) for code, name in settings.LANGUAGES],
        ]


class MailModeForm(forms.Form):
    """The preferences link's one choice: immediate mail or the daily digest."""

    mode = forms.ChoiceField(choices=MailPreference.Mode.choices)
