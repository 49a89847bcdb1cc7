"""The sweepers' schedule in the admin (django-celery-beat's periodic tasks), with a form that
refuses JSON beat could not read instead of storing it."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import PeriodicTask

from .. import jsonsafe


class PeriodicTaskForm(beat_admin.PeriodicTaskForm):
    """django-celery-beat's form checks args and kwargs with a plain JSON decode, which lets
    a RecursionError through (a 500 for JSON nested a few thousand deep) and does not check
    headers at all, though beat decodes them for every run. Each is parsed here safely: a
    clear form error, and nothing stored that would stop beat."""

    def _clean_json(self, field: str) -> str:
        value = self.cleaned_data[field]
        if value:
            try:
                jsonsafe.loads(value)
            except jsonsafe.JSONInputError as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def clean_headers(self) -> str:
        return self._clean_json("headers")


class PeriodicTaskAdmin(beat_admin.PeriodicTaskAdmin):
    form = PeriodicTaskForm


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, PeriodicTaskAdmin)
