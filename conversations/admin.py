from django.contrib import admin

from conversations.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "status", "content", "model_name", "completion_tokens", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "model", "updated_at"]
    list_select_related = ["owner", "model"]
    search_fields = ["title", "owner__username"]
    inlines = [MessageInline]
