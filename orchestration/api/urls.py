from django.urls import path, re_path

from . import repair_views, schedule_views, views

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="api-root"),
    path("workflows/", views.WorkflowListView.as_view(), name="api-workflows"),
    path("instances/", views.InstanceListView.as_view(), name="api-instances"),
    path("instances/batch/", views.InstanceBatchStartView.as_view(), name="api-instances-batch"),
    path("instances/<str:pk>/", views.InstanceDetailView.as_view(), name="api-instance"),
    path(
        "instances/<str:pk>/history/",
        views.InstanceHistoryView.as_view(),
        name="api-instance-history",
    ),
    path(
        "instances/<str:pk>/cancel/", views.InstanceCancelView.as_view(), name="api-instance-cancel"
    ),
    path("instances/<str:pk>/retry/", views.InstanceRetryView.as_view(), name="api-instance-retry"),
    path("instances/<str:pk>/files/", views.InstanceFilesView.as_view(), name="api-instance-files"),
    # operator repair
    path(
        "instances/<str:pk>/edit-input/",
        repair_views.InstanceEditInputView.as_view(),
        name="api-instance-edit-input",
    ),
    path(
        "instances/<str:pk>/reset/",
        repair_views.InstanceResetView.as_view(),
        name="api-instance-reset",
    ),
    path(
        "instances/<str:pk>/steps/<str:step>/edit-output/",
        repair_views.StepEditOutputView.as_view(),
        name="api-step-edit-output",
    ),
    path(
        "instances/<str:pk>/steps/<str:step>/skip/",
        repair_views.StepSkipView.as_view(),
        name="api-step-skip",
    ),
    path(
        "instances/<str:pk>/steps/<str:step>/resolve-compensation/",
        repair_views.StepResolveCompensationView.as_view(),
        name="api-step-resolve-compensation",
    ),
    path("files/<str:pk>/", views.FileDownloadView.as_view(), name="api-file"),
    path(
        "instances/<str:pk>/signals/<str:name>/",
        views.InstanceSignalView.as_view(),
        name="api-instance-signal",
    ),
    path("schedules/", schedule_views.ScheduleListView.as_view(), name="api-schedules"),
    path("schedules/<str:pk>/", schedule_views.ScheduleDetailView.as_view(), name="api-schedule"),
    path(
        "schedules/<str:pk>/pause/",
        schedule_views.SchedulePauseView.as_view(),
        name="api-schedule-pause",
    ),
    path(
        "schedules/<str:pk>/resume/",
        schedule_views.ScheduleResumeView.as_view(),
        name="api-schedule-resume",
    ),
    path(
        "schedules/<str:pk>/trigger/",
        schedule_views.ScheduleTriggerView.as_view(),
        name="api-schedule-trigger",
    ),
    path(
        "schedules/<str:pk>/fires/",
        schedule_views.ScheduleFiresView.as_view(),
        name="api-schedule-fires",
    ),
    re_path(r"^.*$", views.not_found),
]
