"""Chat pages: the conversation list and the conversation, with htmx partials for each action.

Every view that takes an id looks it up through ``conversations_of(request.user)``, so another
user's conversation or message is a 404.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from django.conf import settings
from django.contrib import messages as flash
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import escape, format_html
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import (
    HttpResponseClientRedirect,
    HttpResponseClientRefresh,
    reswap,
    retarget,
)

from feedback.inference.factory import get_inference_client, inference_client_if_ready
from feedback.models import ChatLimits, Conversation, Message, MessageRole, Persona
from feedback.roles import Role, role_required
from feedback.services.answer_runs import AnswerRun, start_answer_soon, stop_answers
from feedback.services.chat import (
    AnswerStillOpen,
    ChatInputError,
    conversations_of,
    do_delete_conversation,
    do_edit_user_message,
    do_open_new_conversation,
    do_regenerate,
    do_rename_conversation,
    do_send_message,
    do_show_message,
    do_update_sampling,
    open_answers_of,
)
from feedback.services.chat_tree import answers_on_screen, thread_entries
from feedback.services.shared_cache import sending_too_fast
from feedback.views.htmx_request import HtmxHttpRequest
from feedback.views.params import small_int

TOO_FAST = "You are sending too fast; wait a minute."
# Input the user can fix: htmx swaps these responses in (base.html's htmx-config), where a 400
# would be dropped (or, with DEBUG, shown by django-htmx as a whole-page error).
UNPROCESSABLE = HTTPStatus.UNPROCESSABLE_ENTITY


def _conversation(request: HtmxHttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(conversations_of(request.user), pk=conversation_id)  # type: ignore[arg-type]


def _message(request: HtmxHttpRequest, conversation_id: int, message_id: int) -> Message:
    conversation = _conversation(request, conversation_id)
    return get_object_or_404(Message, pk=message_id, conversation=conversation)


def _thread_context(
    conversation: Conversation,
    error: str = "",
    limits: ChatLimits | None = None,
    written: dict[int, str] | None = None,
    *,
    until_answered: bool = False,
) -> dict[str, object]:
    """``written``: open answers' text as their runs hold it, ahead of what was saved.
    ``until_answered``: the ``error`` holds only while an answer is written (chat.js takes it
    away when the answer ends)."""
    shown = thread_entries(conversation)
    _show_written([message for message, _ in shown], written or {})
    return {
        "conversation": conversation,
        "entries": [{"message": m, "siblings": s} for m, s in shown],
        "error": error,
        "error_until_answered": until_answered,
        "limits": limits or ChatLimits.current(),
    }


def _show_written(messages: list[Message], written: dict[int, str]) -> None:
    """Open answers show the text their runs hold (``written``), ahead of what was saved."""
    for message in messages:
        text = written.get(message.pk, "")
        if message.is_open and text.startswith(message.content):
            message.content = text


def _thread(
    request: HtmxHttpRequest,
    conversation: Conversation,
    error: str = "",
    limits: ChatLimits | None = None,
    *,
    retitled: bool = False,
    written: dict[int, str] | None = None,
    until_answered: bool = False,
) -> HttpResponse:
    """The message thread alone for htmx, or the whole page otherwise. ``retitled``: the
    title goes along out of band (a first message names the conversation). Only then: htmx
    looks for an out-of-band target from the element that sent the request, and a button on
    an answer that finished meanwhile has been replaced, so the title would not be found.
    ``written``, ``until_answered``: see ``_thread_context``."""
    if request.htmx:
        context = _thread_context(
            conversation, error, limits, written, until_answered=until_answered
        )
        response: str = render_to_string("feedback/chat.html#thread", context, request)
        if retitled:
            response += _new_title(request, conversation)
        # The whole thread replaces the one on the page, whatever the sending element would do
        # with its answer (the composer appends a new turn: ``_thread_end``).
        return reswap(
            retarget(HttpResponse(response, status=UNPROCESSABLE if error else 200), "#thread"),
            "outerHTML",
        )
    if error:
        flash.error(request, error)
    return redirect("chat", conversation_id=conversation.pk)


def _refused(
    request: HtmxHttpRequest,
    conversation: Conversation,
    exc: ChatInputError,
    limits: ChatLimits | None = None,
) -> HttpResponse:
    """The thread with the reason ``exc`` gives; a refusal while an answer is written lasts
    only until that answer ends."""
    until_answered = isinstance(exc, AnswerStillOpen)
    return _thread(request, conversation, str(exc), limits, until_answered=until_answered)


@dataclass(frozen=True)
class _ThreadEnd:
    """What changed at the end of the thread a page shows, to send back instead of the whole
    thread: the last ``count`` messages, in place of message ``replacing`` (None: the sender's
    own swap, the composer's append), with message ``dropping`` taken off the page."""

    count: int
    replacing: int | None = None
    dropping: int | None = None


def _thread_end(
    request: HtmxHttpRequest,
    conversation: Conversation,
    end: _ThreadEnd,
    *,
    retitled: bool,
    written: dict[int, str],
) -> HttpResponse:
    """The end of the thread alone: a send's new turn (the question, then its answer), which the
    composer appends; a regenerated answer, in the old one's place; an edited last question and
    its new answer, in place of the old question, the old answer dropped. It costs the same in a
    long conversation as in a new one, and what the page shows above it (an open Edit, the
    scroll position) stays as it is."""
    entries = thread_entries(conversation)[-end.count :]
    _show_written([message for message, _ in entries], written)
    response = "".join(
        render_to_string(
            "feedback/chat.html#message",
            {"conversation": conversation, "entry": {"message": m, "siblings": s}},
            request,
        )
        for m, s in entries
    )
    if end.dropping is not None:
        response += f'<div hx-swap-oob="delete:#msg-{end.dropping}"></div>'
    if retitled:
        response += _new_title(request, conversation)
    if end.replacing is None:
        return HttpResponse(response)
    return reswap(retarget(HttpResponse(response), f"#msg-{end.replacing}"), "outerHTML")


def _new_title(request: HtmxHttpRequest, conversation: Conversation, *, oob: bool = True) -> str:
    """The conversation's title in the page's header (out of band, or as the response's own
    content), in its sidebar link and in the browser tab (htmx takes a ``<title>`` at the top
    level of a response for the page's, written as base.html writes it)."""
    context = {"conversation": conversation, "oob": oob}
    title: str = render_to_string("feedback/chat.html#title", context, request)
    tab = format_html("<title>{} · {}</title>", conversation.title, settings.SITE_NAME)
    return tab + title + _recent_link(request, conversation)


def _recent_link(request: HtmxHttpRequest, conversation: Conversation) -> str:
    """The conversation's link in the page's sidebar, out of band: its new title."""
    context = {"c": conversation, "oob": True}
    return render_to_string("feedback/chat.html#recent_link", context, request)


@role_required(Role.USER)
@require_GET
def conversation_list(request: HtmxHttpRequest) -> HttpResponse:
    # NUL cannot be in a PostgreSQL text (and is in no title or message: they refuse it)
    query = request.GET.get("q", "").replace("\x00", "").strip()[:200]
    conversations = conversations_of(request.user)  # type: ignore[arg-type]
    if query:
        conversations = conversations.filter(
            Q(title__icontains=query) | Q(messages__content__icontains=query)
        ).distinct()
    page = Paginator(conversations, 30).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "query": query,
        "personas": Persona.objects.filter(is_active=True),
    }
    template = "feedback/conversations.html"
    if request.htmx and request.htmx.target == "conversation-list":
        template += "#list"
    return render(request, template, context)


@role_required(Role.USER)
@require_POST
def conversation_new(request: HtmxHttpRequest) -> HttpResponse:
    persona = None
    if persona_id := small_int(request.POST.get("persona")):  # another value: no persona
        persona = Persona.objects.filter(is_active=True, pk=persona_id).first()
    conversation = do_open_new_conversation(owner=request.user, persona=persona)  # type: ignore[arg-type]
    url = reverse("chat", kwargs={"conversation_id": conversation.pk})
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@role_required(Role.USER)
@require_GET
def chat(request: HtmxHttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _conversation(request, conversation_id)
    recent = list(conversations_of(request.user)[:20])  # type: ignore[arg-type]
    if conversation not in recent:  # an older one: listed too, so its title can follow renames
        recent.append(conversation)
    return render(
        request,
        "feedback/chat.html",
        {**_thread_context(conversation), "recent": recent},
    )


def _answer_anew(
    request: HtmxHttpRequest,
    conversation: Conversation,
    create: Callable[[ChatLimits], Message],
    *,
    end: _ThreadEnd | None = None,
) -> HttpResponse:
    """Send, regenerate and edit: within the rate limit, ``create`` the new pending answer,
    start writing it, and return the thread (with the error the user can fix, if any), or only
    its ``end`` when the page shows the thread up to where the change goes."""
    limits = ChatLimits.current()
    if sending_too_fast(request, limits.messages_per_minute):
        return _thread(request, conversation, TOO_FAST, limits)
    title = conversation.title
    try:
        answer = create(limits)
    except ChatInputError as exc:
        return _refused(request, conversation, exc, limits)
    run = start_answer_soon(
        answer.pk, get_inference_client, inference_client_if_ready, answer=answer
    )
    retitled = answer.conversation.title != title  # a first message names the conversation

    def respond(written: dict[int, str]) -> HttpResponse:
        if end is not None and request.htmx:
            return _thread_end(
                request, answer.conversation, end, retitled=retitled, written=written
            )
        return _thread(
            request, answer.conversation, limits=limits, retitled=retitled, written=written
        )

    if run is None or not request.htmx:
        return respond({})
    return _with_first_words(respond, run, answer)


def _with_first_words(
    respond: Callable[[dict[int, str]], HttpResponse], run: AnswerRun, answer: Message
) -> HttpResponse:
    """The response with the answer's first words (a prefill, milliseconds): the page shows
    them without waiting to open the stream, which then goes on from there. When this send
    claimed the answer, the response is rendered while the model writes them (in another
    process, or thread) and they are filled in when they come; rendered after them, it kept
    each of a burst of sends tens of milliseconds behind its first words."""
    wait = settings.CHAT_SEND_WAITS_FOR_ANSWER_S
    if not run.claimed_here:  # still pending: shown once its run has claimed it
        return respond({answer.pk: run.text_once_begun(wait)})
    draft = respond({})
    words = run.text_once_begun(wait)
    if run.finished:  # ended already (refused, say): shown as it ended
        return respond({answer.pk: words})
    filled = _fill_first_words(draft.content.decode(), answer, words) if words else None
    if filled is None:
        return respond({answer.pk: words}) if words else draft
    draft.content = filled
    return draft


def _fill_first_words(html: str, answer: Message, words: str) -> str | None:
    """``html`` (the open answer rendered with no text) as chat.html renders it with ``words``
    written: in its body, and counted in its stream's ``shown``; None when ``html`` does not
    hold exactly one of each place (the answer saved words before it was rendered)."""
    stream = reverse("chat_stream", args=[answer.conversation_id, answer.pk])
    link, body = f'sse-connect="{stream}?shown=0"', f'id="msg-{answer.pk}-body"></div>'
    if html.count(link) != 1 or html.count(body) != 1:
        return None
    return html.replace(link, f'sse-connect="{stream}?shown={len(words)}"').replace(
        body, f'id="msg-{answer.pk}-body">{escape(words)}</div>'
    )


@role_required(Role.USER)
@require_POST
def send(request: HtmxHttpRequest, conversation_id: int) -> HttpResponse:
    """``after``: the last message the page shows (chat.js adds it). When the new turn goes right
    after it, the response is that turn alone, appended; otherwise (the first message, or a page
    left behind by another tab) the whole thread."""
    conversation = _conversation(request, conversation_id)
    text = request.POST.get("text", "")
    leaf = conversation.current_leaf_id
    return _answer_anew(
        request,
        conversation,
        lambda limits: do_send_message(conversation=conversation, text=text, limits=limits).answer,
        end=_ThreadEnd(2) if leaf is not None and _shown_last(request) == leaf else None,
    )


@role_required(Role.USER)
@require_POST
def regenerate(request: HtmxHttpRequest, conversation_id: int, message_id: int) -> HttpResponse:
    """``after`` as for a send: the last answer regenerated on a page that ends with it gets
    only the new version back, in its place; any other, the whole thread."""
    answer = _message(request, conversation_id, message_id)
    at_end = answer.pk == answer.conversation.current_leaf_id == _shown_last(request)
    return _answer_anew(
        request,
        answer.conversation,
        lambda _: do_regenerate(answer=answer),
        end=_ThreadEnd(1, replacing=answer.pk) if at_end else None,
    )


def _shown_last(request: HtmxHttpRequest) -> int | None:
    """The last message the page shows (``after``, which chat.js adds), if it said."""
    return small_int(request.POST.get("after"))


@role_required(Role.USER)
@require_POST
def edit(request: HtmxHttpRequest, conversation_id: int, message_id: int) -> HttpResponse:
    """``after`` as for a send: the last question edited on a page that ends with its answer
    gets only the new question and answer back, in place of the old two; any other, the whole
    thread."""
    message = _message(request, conversation_id, message_id)
    text = request.POST.get("text", "")
    leaf = message.conversation.current_leaf_id
    at_end = leaf is not None and _shown_last(request) == leaf and answers_on_screen(message)
    return _answer_anew(
        request,
        message.conversation,
        lambda limits: do_edit_user_message(message=message, text=text, limits=limits).answer,
        end=_ThreadEnd(2, replacing=message.pk, dropping=leaf) if at_end else None,
    )


@role_required(Role.USER)
@require_POST
def show(request: HtmxHttpRequest, conversation_id: int, message_id: int) -> HttpResponse:
    """Switch to a sibling (``< 2/3 >``): the branch through that message goes on screen."""
    message = _message(request, conversation_id, message_id)
    try:
        conversation = do_show_message(message=message)
    except ChatInputError as exc:
        return _refused(request, message.conversation, exc)
    return _thread(request, conversation)


def _stopped(
    request: HtmxHttpRequest, conversation_id: int, answers: list[Message]
) -> HttpResponse:
    stop_answers(answers)
    if request.htmx:
        return HttpResponse(status=204)
    return redirect("chat", conversation_id=conversation_id)


@role_required(Role.USER)
@require_POST
def stop(request: HtmxHttpRequest, conversation_id: int, message_id: int) -> HttpResponse:
    answer = _message(request, conversation_id, message_id)
    open_answer = answer.role == MessageRole.ASSISTANT and answer.is_open
    return _stopped(request, conversation_id, [answer] if open_answer else [])


@role_required(Role.USER)
@require_POST
def stop_open(request: HtmxHttpRequest, conversation_id: int) -> HttpResponse:
    """The composer's Stop: whatever answer the conversation is writing. None (it ended, or a
    page in another tab stopped it): the page is out of date, so htmx reloads it."""
    conversation = _conversation(request, conversation_id)
    answers = list(open_answers_of(conversation))
    if not answers and request.htmx:
        return HttpResponseClientRefresh()
    return _stopped(request, conversation_id, answers)


@role_required(Role.USER)
@require_POST
def rename(request: HtmxHttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _conversation(request, conversation_id)
    try:
        do_rename_conversation(conversation=conversation, title=request.POST.get("title", ""))
    except ChatInputError as exc:
        if request.htmx:
            conversation.refresh_from_db()  # the title as it stands, with the reason beside it
            context = {"conversation": conversation, "error": str(exc)}
            return render(request, "feedback/chat.html#title", context, status=UNPROCESSABLE)
        flash.error(request, str(exc))
    if request.htmx:  # the header in place, the sidebar link and the tab's title along
        return HttpResponse(_new_title(request, conversation, oob=False))
    return redirect("chat", conversation_id=conversation.pk)


@role_required(Role.USER)
@require_POST
def delete(request: HtmxHttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _conversation(request, conversation_id)
    do_delete_conversation(conversation=conversation)
    url = reverse("conversations")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@role_required(Role.USER)
@require_POST
def update_settings(request: HtmxHttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _conversation(request, conversation_id)
    error = ""
    try:
        do_update_sampling(
            conversation=conversation,
            temperature=float(request.POST.get("temperature", "")),
            max_new_tokens=int(request.POST.get("max_new_tokens", "")),
        )
    except ValueError as exc:  # ChatInputError is a ValueError; so is a malformed number
        error = str(exc) if isinstance(exc, ChatInputError) else "Enter numbers."
    context = {
        "conversation": conversation,
        "limits": ChatLimits.current(),
        "error": error,
        "saved": not error,
    }
    if request.htmx:
        status = UNPROCESSABLE if error else 200
        return render(request, "feedback/chat.html#settings", context, status=status)
    if error:
        flash.error(request, error)
    return redirect("chat", conversation_id=conversation.pk)
