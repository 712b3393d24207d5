from django.urls import path

from nodes import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("rigs/add/", views.node_add, name="node_add"),
    path("rigs/<slug:name>/", views.node_detail, name="node_detail"),
    path("rigs/<slug:name>/rotate-token/", views.node_rotate_token, name="node_rotate_token"),
    path("rigs/<slug:name>/delete/", views.node_delete, name="node_delete"),
    path("rigs/<slug:name>/profile/", views.node_attach_profile, name="node_attach_profile"),
    path("rigs/<slug:name>/operations/<slug:kind>/", views.node_operation, name="node_operation"),
    path("operations/", views.operation_list, name="operation_list"),
    path("operations/<int:pk>/", views.operation_detail, name="operation_detail"),
    path("operations/<int:pk>/cancel/", views.operation_cancel, name="operation_cancel"),
    path("profiles/", views.profile_list, name="profile_list"),
    path("profiles/new/", views.profile_edit, name="profile_new"),
    path("profiles/<int:pk>/", views.profile_detail, name="profile_detail"),
    path("profiles/<int:pk>/edit/", views.profile_edit, name="profile_edit"),
]
