"""The web start, under /start/."""

from django.urls import path

from . import start_views

app_name = "start"
urlpatterns = [
    path("", start_views.start_list, name="list"),
    path("<slug:name>/", start_views.start_form, name="form"),
]
