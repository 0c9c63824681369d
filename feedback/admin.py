"""The data admin: personas, chat limits, and (read-mostly) conversations and messages.

The admin classes are generic only in django-stubs (not at run time): their type arguments are
left out.
"""

from django.contrib import admin
from django.http import HttpRequest

from feedback.models import ChatLimits, Conversation, Message, Persona


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "is_active", "is_default", "created_at")
    list_filter = ("is_active", "is_default")
    search_fields = ("name", "system_prompt")


@admin.register(ChatLimits)
class ChatLimitsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "max_temperature",
        "default_temperature",
        "max_new_tokens",
        "default_new_tokens",
        "max_message_chars",
        "messages_per_minute",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not ChatLimits.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: ChatLimits | None = None) -> bool:
        return False


class MessageInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Message
    fields = ("role", "status", "content", "model_version", "completion_tokens", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("title", "owner", "persona", "updated_at")
    search_fields = ("title", "owner__username")
    list_select_related = ("owner", "persona")
    raw_id_fields = ("owner", "current_leaf")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "conversation", "role", "status", "model_version", "created_at")
    list_filter = ("role", "status")
    search_fields = ("content",)
    raw_id_fields = ("conversation", "parent")
    readonly_fields = ("created_at", "updated_at")
