"""The instance admin's search box, extended: besides an id or a business key, ``error:<text>``
(``error:"two words"``) and ``input.<path>=<value>`` (operators as in the API:
``input.amount[gte]=100``) search by error text and input fields through
:mod:`orchestration.search`, the same parser and conditions as the API's list. Bad input or a
sealed field shows the reason as an error message and no rows."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .. import search
from ..errors import InvalidInput, localized

HELP = gettext_lazy(
    "An instance id (or its first 8 characters) or a business key (prefix); or "
    'error:<text> (error:"two words") and input.<path>=<value> '
    "(input.customer.country=DE, input.amount[gte]=100; sealed fields cannot be searched)."
)


def search_results(request: HttpRequest, queryset: QuerySet, term: str) -> QuerySet | None:
    """``queryset`` narrowed by an error or input search in ``term``; None when ``term`` is an
    ordinary search (id, business key)."""
    try:
        found = search.parse_term(term)
        if found is None:
            return None
        search.refuse_sealed(found, request.GET.get("workflow__exact") or None)
    except InvalidInput as exc:
        messages.error(request, _("Search: %(why)s") % {"why": localized(exc)})
        return queryset.none()
    return search.apply(queryset, found)
