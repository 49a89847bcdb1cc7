from django.urls import path

from . import views

app_name = "inbox"
urlpatterns = [
    path("", views.inbox_list, name="list"),
    path("<int:pk>/", views.inbox_detail, name="detail"),
    path("<int:pk>/decide/", views.inbox_decide, name="decide"),
    path("<int:pk>/comments/", views.inbox_comment, name="comment"),
    path("bulk/", views.inbox_bulk, name="bulk"),
    path("delegation/", views.delegation_page, name="delegation"),
    path("delegation/<int:pk>/end/", views.delegation_stop, name="delegation-end"),
]
