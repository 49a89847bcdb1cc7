"""The web start: ``/start/`` lists the workflows the user may start, ``/start/<name>/`` is
the form (:mod:`orchestration.start`). Starting goes through ``engine.instance_start``, like
the API: the same validation, the same requester rule, the same files checks."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods

from . import attachments, engine, start
from .actors import actor_of
from .definitions import registry
from .errors import SignoffError, localized
from .middleware import accepts_uploads


@login_required
@require_GET
def start_list(request: HttpRequest) -> HttpResponse:
    """The workflows this user may start from the web (only those)."""
    return render(request, "start/list.html", {"workflows": start.startable_for(request.user)})


@accepts_uploads
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def start_form(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the form. POST: start (one instance per form, however often it is sent) and go to
    the instance's status page; a refusal re-renders the form with the errors next to their
    fields and what was typed, and starts nothing. 404 for a workflow not offered on the web,
    403 for someone not in its ``startable_by`` groups."""
    definition = registry.get(name)
    if definition is None or definition.startable_by is None:
        raise Http404("No such workflow to start.")
    if not start.may_start(request.user, definition):
        return render(
            request,
            "inbox/refused.html",
            {
                "message": _("You may not start “%(workflow)s”: it is for members of %(groups)s.")
                % {
                    "workflow": definition.description or definition.name,
                    "groups": ", ".join(definition.startable_by),
                }
            },
            status=403,
        )
    status = 200
    if request.method == "POST":
        form = start.StartForm(definition, request.POST)
        if form.is_valid():
            try:
                instance, created = engine.instance_start(
                    workflow=definition.name,
                    version=definition.version,
                    input=form.cleaned_data["input"],
                    business_key=form.cleaned_data["business_key"],
                    idempotency_key=f"web:{form.cleaned_data['key']}",
                    started_by=request.user,
                    actor=actor_of(request.user),
                    files=request.FILES.getlist("files"),
                )
            except SignoffError as exc:
                form.add_error(None, localized(exc))
                status = exc.status if exc.status in (400, 403, 409) else 400
            else:
                if created:
                    messages.success(
                        request,
                        _("Started %(workflow)s: follow it here.") % {"workflow": definition.name},
                    )
                else:
                    messages.info(
                        request, _("This form was already sent: here is what it started.")
                    )
                return redirect("instances:detail", pk=instance.pk)
        else:
            status = 400
    else:
        form = start.StartForm(definition)
    return render(
        request,
        "start/form.html",
        {"form": form, "definition": definition, "limits": attachments.upload_limits()},
        status=status,
    )
