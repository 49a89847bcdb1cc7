"""Starting a workflow from the web: who may (``Workflow(startable_by=[...])``), and the form
generated from the workflow's ``input_schema``.

The form renders the schema with django-jsonform (labels from ``title``, help texts from
``description``, enums as selects, numbers, dates, required fields) and validates on the server
with the workflow's own validator, so the web and the API accept exactly the same input; the
errors go back next to their fields (django-jsonform's error map) with what was typed kept.
The field naming the requester is filled by the engine (the person starting); the files' field
(``Workflow(attachments=...)``) is a file input of its own. A random key drawn when the form is
rendered is the start's idempotency key, so a double submit starts one instance.
"""

from __future__ import annotations

import copy
import re
import secrets
from typing import Any

import jsonschema
from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django_jsonform.constants import JOIN_SYMBOL
from django_jsonform.widgets import JSONFormWidget

from . import jsonsafe
from .definitions import Workflow, registry
from .errors import localize

MAX_KEY = 200
_REQUIRED = re.compile(r"^'(?P<name>[^']+)' is a required property$")


def may_start(user: Any, definition: Workflow) -> bool:
    """Whether ``user`` may start ``definition`` from the web: an active, logged-in member of
    one of its ``startable_by`` groups, or a superuser. A workflow without ``startable_by`` is
    not offered on the web."""
    if definition.startable_by is None:
        return False
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name__in=definition.startable_by).exists()


def startable_for(user: Any) -> list[Workflow]:
    """The workflows (newest version of each) ``user`` may start from the web, by name: one
    query for the user's groups."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    groups = set(user.groups.values_list("name", flat=True))
    return sorted(
        (
            wf
            for wf in registry.latest()
            if wf.startable_by is not None
            and (user.is_superuser or groups.intersection(wf.startable_by))
        ),
        key=lambda wf: wf.name,
    )


def form_schema(definition: Workflow) -> dict[str, Any]:
    """The part of the input schema a person fills in, as django-jsonform reads it: without
    the requester's field (the engine fills it) and the files' field (a file input), with
    ``description`` as the help text."""
    schema = copy.deepcopy(definition.input_schema or {"type": "object", "properties": {}})
    schema.setdefault("type", "object")
    properties = schema.setdefault("properties", {})
    left_out = {definition.requester_input, definition.attachments} - {None}
    for name in left_out:
        properties.pop(name, None)
    if "required" in schema:
        schema["required"] = [n for n in schema["required"] if n not in left_out]
    for name, prop in properties.items():
        if not isinstance(prop, dict):
            continue
        prop.setdefault("title", name.replace("_", " ").capitalize())
        if "description" in prop:
            prop.setdefault("help_text", prop["description"])
    return schema


def _said(error: Any) -> str:
    """A schema error in the page's language: the usual checks (a required field, a limit, a
    choice, a pattern, a kind of value) in our words, anything else as the validator says it."""
    limit = error.validator_value
    if error.validator == "required":
        return _("This field is required.")
    if error.validator == "pattern":
        return _("Not in the expected format.")
    if error.validator == "minimum":
        return _("Must be at least %(limit)s.") % {"limit": limit}
    if error.validator == "maximum":
        return _("Must be at most %(limit)s.") % {"limit": limit}
    if error.validator == "exclusiveMinimum":
        return _("Must be more than %(limit)s.") % {"limit": limit}
    if error.validator == "exclusiveMaximum":
        return _("Must be less than %(limit)s.") % {"limit": limit}
    if error.validator == "minLength" and isinstance(limit, int):
        return ngettext(
            "Must be at least %(limit)d character long.",
            "Must be at least %(limit)d characters long.",
            limit,
        ) % {"limit": limit}
    if error.validator == "maxLength" and isinstance(limit, int):
        return ngettext(
            "Must be at most %(limit)d character long.",
            "Must be at most %(limit)d characters long.",
            limit,
        ) % {"limit": limit}
    if error.validator == "enum":
        return _("Choose one of the offered values.")
    if error.validator == "type":
        return _("Not the expected kind of value.")
    return error.message


def _field_errors(definition: Workflow, data: dict[str, Any]) -> tuple[dict[str, list[str]], list]:
    """The schema's complaints about ``data``, keyed as django-jsonform's error map wants them
    (field paths joined by its symbol), and those that name no field."""
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    if definition.input_schema is None:
        return by_field, general
    validator = jsonschema.Draft202012Validator(definition.input_schema)
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))[:50]:
        path = [str(p) for p in error.absolute_path]
        message = error.message
        if error.validator == "required":
            found = _REQUIRED.match(error.message)
            if found:
                path = [*path, found["name"]]
                message = _said(error)
        else:
            message = _said(error)
        if path:
            by_field.setdefault(JOIN_SYMBOL.join(path), []).append(message)
        else:
            general.append(message)
    return by_field, general


class StartForm(forms.Form):
    """The start form of one workflow (see the module docstring). ``cleaned_data["input"]`` is
    the input as the engine takes it (without the files' field)."""

    business_key = forms.CharField(
        label=gettext_lazy("Reference"),
        required=False,
        max_length=200,
        help_text=gettext_lazy(
            "Optional: your own reference (an order or ticket number), shown everywhere."
        ),
    )
    key = forms.CharField(widget=forms.HiddenInput, max_length=MAX_KEY)

    def __init__(self, definition: Workflow, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.definition = definition
        self.fields["input"] = forms.CharField(
            label=gettext_lazy("Details"),
            required=False,
            widget=JSONFormWidget(schema=form_schema(definition)),
        )
        self.order_fields(["input", "business_key", "key"])
        if not self.is_bound:
            self.initial["key"] = secrets.token_urlsafe(18)

    def clean_key(self) -> str:
        key = self.cleaned_data["key"]
        if not key.isprintable():
            raise forms.ValidationError(_("Reload the page and submit again."))
        return key

    def clean_input(self) -> dict[str, Any]:
        raw = self.cleaned_data.get("input") or "{}"
        try:
            data = jsonsafe.loads(raw)
        except jsonsafe.JSONInputError as exc:
            raise forms.ValidationError(
                _("The form's data is not valid JSON: %(error)s") % {"error": exc}
            ) from None
        if data in ("", None):
            data = {}
        if not isinstance(data, dict):
            raise forms.ValidationError(_("The form's data must be an object."))
        problem = jsonsafe.storable_json_problem(data)
        if problem:
            raise forms.ValidationError(localize(problem))
        # What the engine adds (the requester, the files) is not the person's to fill in.
        for name in (self.definition.requester_input, self.definition.attachments):
            if name:
                data.pop(name, None)
        check = dict(data)
        if self.definition.requester_input:
            check[self.definition.requester_input] = "you"
        if self.definition.attachments:
            check[self.definition.attachments] = []
        by_field, general = _field_errors(self.definition, check)
        if by_field:
            self.fields["input"].widget.add_error(by_field)
        if by_field or general:
            raise forms.ValidationError([_("Please correct the errors below."), *general])
        return data
