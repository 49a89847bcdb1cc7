from django.urls import path

from . import claim_views, files, mail_views, views

app_name = "inbox"
urlpatterns = [
    path("", views.inbox_list, name="list"),
    path("<int:pk>/", views.inbox_detail, name="detail"),
    path("<int:pk>/decide/", views.inbox_decide, name="decide"),
    path("<int:pk>/files/", files.inbox_attach, name="attach"),
    path("<int:pk>/revise/", views.inbox_revise, name="revise"),
    path("<int:pk>/withdraw/", views.inbox_withdraw, name="withdraw"),
    path("<int:pk>/comments/", views.inbox_comment, name="comment"),
    path("bulk/", views.inbox_bulk, name="bulk"),
    path("<int:pk>/claim/", claim_views.inbox_claim, name="claim"),
    path("<int:pk>/release/", claim_views.inbox_release, name="release"),
    path("<int:pk>/take-over/", claim_views.inbox_take_over, name="take-over"),
    path("delegation/", views.delegation_page, name="delegation"),
    path("preferences/", mail_views.preferences_page, name="preferences"),
    path("delegation/<int:pk>/end/", views.delegation_stop, name="delegation-end"),
]
