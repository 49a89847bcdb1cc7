from django.urls import path

from . import (
    claim_views,
    delegation_views,
    detail_views,
    file_views,
    list_views,
    mail_views,
    revise_views,
)

app_name = "inbox"
urlpatterns = [
    path("", list_views.inbox_list, name="list"),
    path("<int:pk>/", detail_views.inbox_detail, name="detail"),
    path("<int:pk>/decide/", detail_views.inbox_decide, name="decide"),
    path("<int:pk>/files/", file_views.inbox_attach, name="attach"),
    path("<int:pk>/revise/", revise_views.inbox_revise, name="revise"),
    path("<int:pk>/withdraw/", revise_views.inbox_withdraw, name="withdraw"),
    path("<int:pk>/comments/", detail_views.inbox_comment, name="comment"),
    path("bulk/", list_views.inbox_bulk, name="bulk"),
    path("<int:pk>/claim/", claim_views.inbox_claim, name="claim"),
    path("<int:pk>/release/", claim_views.inbox_release, name="release"),
    path("<int:pk>/take-over/", claim_views.inbox_take_over, name="take-over"),
    path("delegation/", delegation_views.delegation_page, name="delegation"),
    path("preferences/", mail_views.preferences_page, name="preferences"),
    path("delegation/<int:pk>/end/", delegation_views.delegation_stop, name="delegation-end"),
]
