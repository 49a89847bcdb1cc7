from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .definitions import registry


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", {"workflows": registry.all()})
