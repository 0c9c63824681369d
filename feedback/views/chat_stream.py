"""The answer stream: Server-Sent Events for htmx's SSE extension, served by an async view.

Events: ``reset`` (everything written so far, sent first on every (re)connection), ``token``
(a new piece), ``done`` (the finished message, rendered). Every piece is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.template.loader import render_to_string
from django.utils.html import escape
from django.views.decorators.http import require_GET

from feedback.inference.factory import get_inference_client
from feedback.models import Message
from feedback.roles import Role, has_role
from feedback.services.answer_runs import StreamEvent, watch_answer
from feedback.services.chat import conversations_of
from feedback.services.chat_tree import sibling_position
from feedback.views.params import small_int

MAX_SHOWN = 1_000_000


def sse(event: str, data: str) -> bytes:
    """One Server-Sent Event. Each line of ``data`` goes in a data field of its own, which the
    browser joins with LF; CR and CRLF end a line in SSE too, so they are sent as LF (a bare CR
    inside a field would end it, and the text after it would be dropped)."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def _render_done(message_id: int, request: HttpRequest) -> str:
    """The finished message, rendered with the page's request: its forms (regenerate, edit)
    carry the page's CSRF token like the rest of the page."""
    try:
        message = Message.objects.select_related("conversation").get(pk=message_id)
        entry = {"message": message, "siblings": sibling_position(message)}
    finally:
        _release_connection()
    context = {"entry": entry, "conversation": message.conversation}
    return render_to_string("feedback/chat.html#message", context, request)


def _shown(request: HttpRequest) -> int:
    """How many characters of the answer the page shows already (``?shown=``; 0 if absent or
    not a small whole number)."""
    value = small_int(request.GET.get("shown"))
    return min(value, MAX_SHOWN) if value is not None else 0


async def _events(message_id: int, request: HttpRequest) -> AsyncGenerator[bytes, None]:
    # A comment line first, so proxies and the browser see the stream open at once.
    yield b": stream open\n\n"
    event: StreamEvent
    # aclosing: a closed page must unsubscribe at once, not when the generator is collected.
    async with aclosing(watch_answer(message_id, get_inference_client, _shown(request))) as events:
        async for event in events:
            if event.kind == "done":
                yield sse("done", await sync_to_async(_render_done)(message_id, request))
                return
            yield sse(event.kind, escape(event.text))


def _may_watch(request: HttpRequest, conversation_id: int, message_id: int) -> bool:
    """Whether the visitor owns this answer (one trip to the sync thread for the session, the
    user, the roles and the answer: the first token waits on it)."""
    try:
        user = request.user
        if not user.is_authenticated or not has_role(user, Role.USER):
            return False
        return Message.objects.filter(
            pk=message_id,
            role="assistant",
            conversation__in=conversations_of(user).filter(pk=conversation_id),
        ).exists()
    finally:
        _release_connection()


def _release_connection() -> None:
    """Back to the pool now: a request keeps its connection until it ends, and a stream lasts
    as long as its answer. (Not inside a transaction: a test's, for one.)"""
    if not connection.in_atomic_block:
        connection.close()


@require_GET
async def stream(
    request: HttpRequest, conversation_id: int, message_id: int
) -> StreamingHttpResponse:
    if not await sync_to_async(_may_watch)(request, conversation_id, message_id):
        raise Http404("No such answer.")
    response = StreamingHttpResponse(_events(message_id, request), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
