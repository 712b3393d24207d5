from django.urls import path

from alerts import views

urlpatterns = [
    path("alerts/", views.alert_list, name="alert_list"),
    path("alerts/rules/<int:pk>/", views.rule_edit, name="alert_rule_edit"),
    path("alerts/channels/new/", views.channel_edit, name="alert_channel_new"),
    path("alerts/channels/<int:pk>/", views.channel_edit, name="alert_channel_edit"),
    path("alerts/channels/<int:pk>/delete/", views.channel_delete, name="alert_channel_delete"),
    path("alerts/channels/<int:pk>/test/", views.channel_test, name="alert_channel_test"),
]
