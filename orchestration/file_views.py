"""The HTML side of attachments: ``/files/<id>/`` streams a file to a logged-in person who may
read it (the same rule as the API's ``/api/v1/files/<id>/``); anyone else gets 403, an unknown
id 404."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods

from . import attachments
from .errors import NotAllowed, NotFound


@login_required
@require_http_methods(["GET", "HEAD"])
def file_download(request: HttpRequest, pk: Any) -> HttpResponse:
    try:
        attachment = attachments.attachment_for_reader(user=request.user, attachment_id=pk)
        return attachments.file_response(attachment)
    except NotFound:
        raise Http404("No such file.") from None
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None
