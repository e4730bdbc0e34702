from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from chatsite import health
from conversations.openai_api import views as openai_api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("v1/models", openai_api.models, name="openai_models"),
    path("v1/chat/completions", openai_api.chat_completions, name="openai_chat_completions"),
    re_path(r"^v1/(?P<rest>.*)$", openai_api.unknown),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("conversations.urls")),
]
