from django.urls import path

from marketplace import chain_views, install_views, session_views, views

urlpatterns = [
    path("rigs/<slug:name>/marketplace/", views.rig_marketplace, name="rig_marketplace"),
    path("rigs/<slug:name>/marketplace/refresh/", views.rig_router_refresh, name="rig_router_refresh"),
]

# Publishing deployments, the fleet checklist (views).
urlpatterns += [
    path("marketplace/", views.fleet, name="marketplace_fleet"),
    path("rigs/<slug:name>/marketplace/apply/", views.rig_apply_published, name="rig_apply_published"),
    # Three segments after the id: hosting's deployments/<pk>/<action>/ would take two.
    path("deployments/<int:pk>/marketplace/publish/", views.deployment_publish, name="deployment_publish"),
    path("deployments/<int:pk>/marketplace/unpublish/", views.deployment_unpublish, name="deployment_unpublish"),
]

# On-chain actions (chain_views).
urlpatterns += [
    path("rigs/<slug:name>/marketplace/chain/<slug:action>/", chain_views.chain_action, name="rig_chain_action"),
]

# Sessions, earnings and the restart timeline (session_views).
urlpatterns += [
    path("rigs/<slug:name>/marketplace/sessions/", session_views.rig_sessions, name="rig_sessions"),
]

# Installing a release (install_views).
urlpatterns += [
    path("rigs/<slug:name>/marketplace/install/", install_views.rig_router_install, name="rig_router_install"),
]
