from django.urls import path

from conversations import views
from conversations.access import permissions, usage_views
from conversations.arena import views as arena_views
from conversations.inspection import attention, prompt, tokens
from conversations.openai_api import keys
from conversations.review import views as review_views

app_name = "conversations"
urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("c/new/", views.conversation_new, name="new"),
    path("c/<int:pk>/", views.conversation_detail, name="detail"),
    path("c/<int:pk>/earlier/", views.conversation_earlier, name="earlier"),
    path("c/<int:pk>/rename/", views.conversation_rename, name="rename"),
    path("c/<int:pk>/delete/", views.conversation_delete, name="delete"),
    path("c/<int:pk>/model/", views.conversation_model, name="model"),
    path("c/<int:pk>/settings/", views.conversation_settings, name="settings"),
    path("c/<int:pk>/switch/<int:message_id>/", views.conversation_switch, name="switch"),
    path("c/<int:pk>/compare/<int:comparison_id>/vote/", views.comparison_vote, name="vote"),
    path("c/<int:pk>/consent/", views.conversation_consent, name="consent"),
    path("c/<int:pk>/m/<int:message_id>/feedback/", views.message_feedback, name="feedback"),
    path("c/<int:pk>/m/<int:message_id>/rate/", views.message_rate, name="rate"),
    path("c/<int:pk>/m/<int:message_id>/prefer/", views.message_prefer, name="prefer"),
    path("c/<int:pk>/m/<int:message_id>/prompt/", prompt.message_prompt, name="prompt"),
    path("c/<int:pk>/m/<int:message_id>/inspect/", tokens.message_inspect, name="inspect"),
    path("c/<int:pk>/m/<int:message_id>/attention/", attention.message_attention, name="attention"),
    path("c/<int:pk>/m/<int:message_id>/attention/<str:kind>.png", attention.attention_png, name="attention_png"),
    path("privacy/", views.privacy, name="privacy"),
    path("privacy/delete-all/", views.delete_all_conversations, name="delete_all"),
    path("start/", permissions.start, name="start"),
    path("account/", usage_views.account, name="account"),
    path("review/", review_views.queue, name="review_queue"),
    path("review/next/", review_views.next_item, name="review_next"),
    path("review/<int:pk>/", review_views.item, name="review_item"),
    path("keys/", keys.api_keys, name="api_keys"),
    path("keys/<int:pk>/revoke/", keys.api_key_revoke, name="api_key_revoke"),
    path("arena/", arena_views.arena_list, name="arena_list"),
    path("arena/new/", arena_views.arena_new, name="arena_new"),
    path("arena/<int:pk>/", arena_views.arena_detail, name="arena"),
    path("arena/<int:pk>/m/<int:match_id>/vote/", arena_views.arena_vote, name="arena_vote"),
    path("arena/<int:pk>/promote/", arena_views.arena_promote, name="arena_promote"),
]
