from django.urls import path

from hosting import bench_views, chat_views, views

urlpatterns = [
    path("rigs/<slug:name>/builds/", views.rig_builds, name="rig_builds"),
    path("rigs/<slug:name>/builds/adopt/", views.rig_adopt, name="rig_adopt"),
    path("rigs/<slug:name>/deployments/new/", views.deployment_edit, name="deployment_new"),
    path("rigs/<slug:name>/deployments/<int:pk>/edit/", views.deployment_edit, name="deployment_edit"),
    path("builds/<int:pk>/", views.build_detail, name="build_detail"),
    path("builds/<int:pk>/default/", views.build_make_default, name="build_make_default"),
    path("builds/<int:pk>/delete/", views.build_delete, name="build_delete"),
    path("deployments/", views.deployment_list, name="deployment_list"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment_detail"),
    path("deployments/<int:pk>/delete/", views.deployment_delete, name="deployment_delete"),
    path("deployments/<int:pk>/benchmarks/run/", bench_views.deployment_benchmark, name="deployment_benchmark"),
    path("economics/", bench_views.economics_settings, name="economics_settings"),
    path("deployments/<int:pk>/chat/", chat_views.deployment_chat, name="deployment_chat"),
    path("deployments/<int:pk>/chat/<int:operation_pk>/", chat_views.deployment_chat_answer,
         name="deployment_chat_answer"),
    path("deployments/<int:pk>/<str:action>/", views.deployment_action, name="deployment_action"),
]
