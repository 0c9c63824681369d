from django.urls import path

from feedback.views import accounts, chat, chat_stream, pages

urlpatterns = [
    path("", pages.home, name="home"),
    path("signup/", accounts.signup, name="signup"),
    path("annotate/", pages.annotate, name="annotate"),
    path("manage/", pages.manage, name="manage"),
    path("chat/", chat.conversation_list, name="conversations"),
    path("chat/new/", chat.conversation_new, name="conversation_new"),
    path("chat/<int:conversation_id>/", chat.chat, name="chat"),
    path("chat/<int:conversation_id>/send/", chat.send, name="chat_send"),
    path("chat/<int:conversation_id>/rename/", chat.rename, name="chat_rename"),
    path("chat/<int:conversation_id>/delete/", chat.delete, name="chat_delete"),
    path("chat/<int:conversation_id>/settings/", chat.update_settings, name="chat_settings"),
    path("chat/<int:conversation_id>/stop/", chat.stop_open, name="chat_stop_open"),
    path(
        "chat/<int:conversation_id>/messages/<int:message_id>/stream/",
        chat_stream.stream,
        name="chat_stream",
    ),
    path(
        "chat/<int:conversation_id>/messages/<int:message_id>/stop/",
        chat.stop,
        name="chat_stop",
    ),
    path(
        "chat/<int:conversation_id>/messages/<int:message_id>/regenerate/",
        chat.regenerate,
        name="chat_regenerate",
    ),
    path(
        "chat/<int:conversation_id>/messages/<int:message_id>/edit/",
        chat.edit,
        name="chat_edit",
    ),
    path(
        "chat/<int:conversation_id>/messages/<int:message_id>/show/",
        chat.show,
        name="chat_show",
    ),
]
