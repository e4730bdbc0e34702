from django.urls import path

from conversations import views

app_name = "conversations"
urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("c/new/", views.conversation_new, name="new"),
    path("c/<int:pk>/", views.conversation_detail, name="detail"),
    path("c/<int:pk>/rename/", views.conversation_rename, name="rename"),
    path("c/<int:pk>/delete/", views.conversation_delete, name="delete"),
    path("c/<int:pk>/model/", views.conversation_model, name="model"),
    path("c/<int:pk>/settings/", views.conversation_settings, name="settings"),
    path("c/<int:pk>/switch/<int:message_id>/", views.conversation_switch, name="switch"),
    path("c/<int:pk>/compare/<int:comparison_id>/vote/", views.comparison_vote, name="vote"),
]
