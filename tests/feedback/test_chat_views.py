"""The chat pages through Django's test client: htmx partials, errors, limits, CSRF."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_htmx.middleware import HtmxDetails
from factories import ConversationFactory, PersonaFactory, UserFactory

from feedback.models import ChatLimits, Conversation, Message, MessageStatus
from feedback.roles import Role
from feedback.services.chat import do_finish_answer, do_send_message, do_start_answer
from feedback.views import chat as chat_views

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def conversation(client: Client) -> Conversation:
    conversation = ConversationFactory()
    client.force_login(conversation.owner)
    return conversation


def test_new_conversation_with_persona(client: Client) -> None:
    user = UserFactory()
    persona = PersonaFactory(name="Pirate", system_prompt="Talk like a pirate.")
    client.force_login(user)
    page = client.get(reverse("conversations")).content.decode()
    assert "Pirate" in page
    response = client.post(reverse("conversation_new"), {"persona": persona.pk})
    conversation = Conversation.objects.get(owner=user)
    assert response["Location"] == reverse("chat", args=[conversation.pk])
    assert conversation.system_prompt == "Talk like a pirate."


def test_send_returns_the_thread_with_a_stream(client: Client, conversation: Conversation) -> None:
    response = client.post(reverse("chat_send", args=[conversation.pk]), {"text": "hello"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    answer = Message.objects.get(role="assistant")
    assert 'id="thread"' in html and "<html" not in html
    stream_url = reverse("chat_stream", args=[conversation.pk, answer.pk])
    assert f'sse-connect="{stream_url}?shown=0"' in html  # the page shows none of it yet
    # the answer's status class: while it is open, the composer's Stop replaces Send (app.css)
    assert 'sse-swap="token"' in html and "status-pending" in html
    # the first message names the conversation: the new title goes along out of band
    assert 'id="chat-title" class="chat-title" hx-swap-oob="true"' in html and "hello" in html
    # later ones leave the title (and a rename form open there) alone
    do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)
    do_finish_answer(answer_id=answer.pk, status=MessageStatus.COMPLETE, content="hi")
    response = client.post(reverse("chat_send", args=[conversation.pk]), {"text": "more"}, **HTMX)
    assert response.status_code == 200 and "hx-swap-oob" not in response.content.decode()


def finish(answer: Message, content: str) -> Message:
    """Close an answer as its run would, with ``content``."""
    do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)
    do_finish_answer(answer_id=answer.pk, status=MessageStatus.COMPLETE, content=content)
    return answer


def latest_answer() -> Message:
    return Message.objects.filter(role="assistant").latest("pk")


def test_a_send_from_the_threads_end_returns_the_new_turn_alone(
    client: Client, conversation: Conversation
) -> None:
    first = finish(do_send_message(conversation=conversation, text="first").answer, "one")
    url = reverse("chat_send", args=[conversation.pk])
    response = client.post(url, {"text": "second", "after": str(first.pk)}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    answer = latest_answer()
    # the composer appends it: no thread around it, nothing from above it, no swap override
    assert 'id="thread"' not in html and "first" not in html and "<p>one</p>" not in html
    assert html.count("<article") == 2 and "second" in html and f'id="msg-{answer.pk}"' in html
    assert "sse-connect" in html and "HX-Reswap" not in response
    finish(answer, "two")

    # A page left behind (another tab sent meanwhile): the whole thread replaces the page's.
    response = client.post(url, {"text": "third", "after": str(first.pk)}, **HTMX)
    html = response.content.decode()
    assert 'id="thread"' in html and "first" in html and "third" in html
    assert response["HX-Retarget"] == "#thread" and response["HX-Reswap"] == "outerHTML"
    # So does a refusal, with its reason in place of the composer's append.
    answer = finish(latest_answer(), "three")
    response = client.post(url, {"text": "x" * 9000, "after": str(answer.pk)}, **HTMX)
    assert response.status_code == 422 and response["HX-Reswap"] == "outerHTML"
    assert 'id="thread"' in response.content.decode()


def test_a_send_takes_a_fixed_number_of_queries_however_long_the_conversation(
    client: Client, conversation: Conversation
) -> None:
    """Session, user, roles, conversation, limits, then the send's own reads and writes: the same 13
    in a conversation of 1 turn or 20 (a regression here is a query per message)."""
    url = reverse("chat_send", args=[conversation.pk])
    counts = []
    for turns in (1, 20):
        while Message.objects.filter(role="user").count() < turns:
            finish(do_send_message(conversation=conversation, text="q").answer, "a")
        conversation.refresh_from_db()
        with CaptureQueriesContext(connection) as queries:
            response = client.post(
                url, {"text": "next", "after": str(conversation.current_leaf_id)}, **HTMX
            )
        assert response.status_code == 200
        counts.append(len(queries))
        finish(latest_answer(), "a")
    assert counts[0] == counts[1] <= 13, counts


def test_regenerating_the_last_answer_returns_the_new_version_in_its_place(
    client: Client, conversation: Conversation
) -> None:
    first = finish(do_send_message(conversation=conversation, text="first").answer, "one")
    url = reverse("chat_regenerate", args=[conversation.pk, first.pk])
    response = client.post(url, {"after": str(first.pk)}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    again = latest_answer()
    assert html.count("<article") == 1 and f'id="msg-{again.pk}"' in html and "2/2" in html
    assert response["HX-Retarget"] == f"#msg-{first.pk}" and response["HX-Reswap"] == "outerHTML"
    finish(again, "two")

    # Not the answer the page ends with (an older version, a page left behind): the thread.
    response = client.post(url, {"after": str(first.pk)}, **HTMX)
    assert 'id="thread"' in response.content.decode() and "3/3" in response.content.decode()
    assert response["HX-Retarget"] == "#thread"


def test_editing_the_last_question_returns_the_new_turn_in_place_of_the_old(
    client: Client, conversation: Conversation
) -> None:
    first = finish(do_send_message(conversation=conversation, text="first").answer, "one")
    turn = do_send_message(conversation=conversation, text="second")
    finish(turn.answer, "two")
    url = reverse("chat_edit", args=[conversation.pk, turn.user.pk])
    response = client.post(url, {"text": "second, edited", "after": str(turn.answer.pk)}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<article") == 2 and "second, edited" in html and "2/2" in html
    assert "first" not in html  # nothing from above the edited question
    assert response["HX-Retarget"] == f"#msg-{turn.user.pk}"
    assert f'hx-swap-oob="delete:#msg-{turn.answer.pk}"' in html  # the old answer goes
    finish(latest_answer(), "two, again")

    # An earlier question: the thread below it changes, so the whole thread comes back.
    url = reverse("chat_edit", args=[conversation.pk, first.parent_id])
    response = client.post(url, {"text": "first, edited", "after": str(latest_answer().pk)}, **HTMX)
    assert 'id="thread"' in response.content.decode()
    assert response["HX-Retarget"] == "#thread"


def test_send_without_javascript_redirects(client: Client, conversation: Conversation) -> None:
    response = client.post(reverse("chat_send", args=[conversation.pk]), {"text": "hello"})
    assert response.status_code == 302
    assert "hello" in client.get(response["Location"]).content.decode()


@pytest.mark.parametrize(
    ("text", "fragment"), [("a\x00b", "NUL byte"), ("x" * 9000, "the limit is 8,000")]
)
def test_bad_input_is_a_clear_422(
    client: Client, conversation: Conversation, text: str, fragment: str
) -> None:
    response = client.post(reverse("chat_send", args=[conversation.pk]), {"text": text}, **HTMX)
    assert response.status_code == 422  # swapped in by htmx (base.html), unlike a 400
    assert fragment in response.content.decode()
    assert not Message.objects.exists()


def test_sending_is_rate_limited(client: Client, conversation: Conversation) -> None:
    limits = ChatLimits.current()
    limits.messages_per_minute = 2
    limits.save()
    url = reverse("chat_send", args=[conversation.pk])
    for _ in range(2):
        assert client.post(url, {"text": "x"}, **HTMX).status_code in (200, 422)
        Message.objects.filter(role="assistant").update(status=MessageStatus.CANCELLED)
    response = client.post(url, {"text": "x"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 422 and "too fast" in html
    # below the thread, where the page scrolls after a swap (the composer's end)
    assert html.index('role="alert"') > html.rindex("</article>")
    assert "data-until-answered" not in html  # still true once an answer ends


def test_a_send_refused_while_an_answer_is_written_says_so_until_it_ends(
    client: Client, conversation: Conversation
) -> None:
    """Another tab's answer is being written: the refusal comes with the thread, whose open
    answer the page then follows, and is marked to go when that answer ends (chat.js)."""
    turn = do_send_message(conversation=conversation, text="first")
    response = client.post(reverse("chat_send", args=[conversation.pk]), {"text": "second"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 422
    assert '<p class="error" role="alert" data-until-answered>An answer is still' in html
    assert f'sse-connect="{reverse("chat_stream", args=[conversation.pk, turn.answer.pk])}' in html
    assert not Message.objects.filter(content="second").exists()


def test_regenerate_and_switch_siblings(client: Client, conversation: Conversation) -> None:
    turn = do_send_message(conversation=conversation, text="hi")
    do_start_answer(answer_id=turn.answer.pk, model_version="v", dropped_turns=0)
    do_finish_answer(answer_id=turn.answer.pk, status=MessageStatus.COMPLETE, content="first")
    response = client.post(
        reverse("chat_regenerate", args=[conversation.pk, turn.answer.pk]), **HTMX
    )
    assert "2/2" in response.content.decode()
    second = Message.objects.get(role="assistant", status=MessageStatus.PENDING)
    do_start_answer(answer_id=second.pk, model_version="v", dropped_turns=0)
    do_finish_answer(answer_id=second.pk, status=MessageStatus.COMPLETE, content="second")
    response = client.post(reverse("chat_show", args=[conversation.pk, turn.answer.pk]), **HTMX)
    html = response.content.decode()
    assert "1/2" in html and "first" in html
    # no title: it has not changed, and htmx would look for it from a button that may be gone
    assert "hx-swap-oob" not in html


def test_stop_cancels_a_pending_answer(client: Client, conversation: Conversation) -> None:
    turn = do_send_message(conversation=conversation, text="hi")
    response = client.post(reverse("chat_stop", args=[conversation.pk, turn.answer.pk]), **HTMX)
    assert response.status_code == 204
    turn.answer.refresh_from_db()
    assert turn.answer.status == MessageStatus.CANCELLED


def test_the_composers_stop_cancels_the_answer_being_written(
    client: Client, conversation: Conversation
) -> None:
    html = client.get(reverse("chat", args=[conversation.pk])).content.decode()
    stop_url = reverse("chat_stop_open", args=[conversation.pk])
    assert f'formaction="{stop_url}"' in html and f'hx-post="{stop_url}"' in html
    # Nothing open: the page that shows a Stop is out of date, and htmx reloads it.
    response = client.post(stop_url, **HTMX)
    assert response.status_code == 200 and response["HX-Refresh"] == "true"
    other_conversation = ConversationFactory(owner=conversation.owner)
    elsewhere = do_send_message(conversation=other_conversation, text="a")
    turn = do_send_message(conversation=conversation, text="hi")
    response = client.post(stop_url, **HTMX)
    assert response.status_code == 204
    turn.answer.refresh_from_db()
    elsewhere.answer.refresh_from_db()
    assert turn.answer.status == MessageStatus.CANCELLED
    assert elsewhere.answer.status == MessageStatus.PENDING  # another conversation's answer
    # Without JavaScript the button posts the composer form there: back to the page.
    response = client.post(stop_url, {"text": ""})
    assert response.status_code == 302 and response["Location"] == reverse(
        "chat", args=[conversation.pk]
    )


def test_no_switching_versions_while_an_answer_is_written(
    client: Client, conversation: Conversation
) -> None:
    turn = do_send_message(conversation=conversation, text="hi")
    do_start_answer(answer_id=turn.answer.pk, model_version="", dropped_turns=0)
    do_finish_answer(answer_id=turn.answer.pk, status=MessageStatus.COMPLETE, content="first")
    client.post(reverse("chat_regenerate", args=[conversation.pk, turn.answer.pk]), **HTMX)
    response = client.post(reverse("chat_show", args=[conversation.pk, turn.answer.pk]), **HTMX)
    assert response.status_code == 422
    assert "still being written" in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.current_leaf_id != turn.answer.pk  # the new answer stays on screen


def test_a_new_title_reaches_the_sidebar_too(client: Client, conversation: Conversation) -> None:
    others = [ConversationFactory(owner=conversation.owner) for _ in range(20)]
    page = client.get(reverse("chat", args=[conversation.pk])).content.decode()
    assert f'id="recent-{conversation.pk}"' in page  # older than the 20 listed, listed anyway
    assert f'id="recent-{others[0].pk}"' in page
    sidebar_link = f'<a id="recent-{conversation.pk}" href="/chat/{conversation.pk}/" hx-swap-oob'
    send = reverse("chat_send", args=[conversation.pk])
    html = client.post(send, {"text": "Rivers"}, **HTMX).content.decode()
    assert f'{sidebar_link}="true">Rivers</a>' in html
    assert "<title>Rivers · palmloop</title>" in html  # the browser tab's title
    rename = reverse("chat_rename", args=[conversation.pk])
    html = client.post(rename, {"title": "Seas & <b>"}, **HTMX).content.decode()
    assert f'{sidebar_link}="true">Seas &amp; &lt;b&gt;</a>' in html
    assert "<h1>Seas &amp; &lt;b&gt;</h1>" in html
    assert html.startswith("<title>Seas &amp; &lt;b&gt; · ")  # the tab's title too, escaped


def test_a_bad_title_comes_back_in_the_title_block(
    client: Client, conversation: Conversation
) -> None:
    conversation.title = "Rivers"
    conversation.save()
    response = client.post(reverse("chat_rename", args=[conversation.pk]), {"title": " "}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 422
    assert 'id="chat-title"' in html and "<h1>Rivers</h1>" in html and 'role="alert"' in html


def test_rename_delete_and_search(client: Client, conversation: Conversation) -> None:
    do_send_message(conversation=conversation, text="the rivers of France")
    response = client.post(
        reverse("chat_rename", args=[conversation.pk]), {"title": "Geography"}, **HTMX
    )
    assert "Geography" in response.content.decode()
    other = ConversationFactory(owner=conversation.owner, title="Cooking")
    found = client.get(reverse("conversations"), {"q": "france"}).content.decode()
    assert "Geography" in found and "Cooking" not in found
    response = client.post(reverse("chat_delete", args=[other.pk]), **HTMX)
    assert response["HX-Redirect"] == reverse("conversations")
    assert not Conversation.objects.filter(pk=other.pk).exists()


def test_a_search_with_a_nul_byte_is_a_search_without_it(
    client: Client, conversation: Conversation
) -> None:
    do_send_message(conversation=conversation, text="the rivers of France")
    response = client.get(reverse("conversations"), {"q": "fra\x00nce"})
    assert response.status_code == 200
    assert "rivers of France" in response.content.decode()


@pytest.mark.parametrize("after", ["\u00b2", "9" * 5000, "-1", "1.5", "\x00"])
def test_a_malformed_after_is_ignored_not_a_500(
    client: Client, conversation: Conversation, after: str
) -> None:
    """``after`` (the last message the page shows) comes from the page's script: anything but
    a plain id means the page gets the whole thread back."""

    def finish(answer: Message) -> Message:
        do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)
        do_finish_answer(answer_id=answer.pk, status=MessageStatus.COMPLETE, content="Yes.")
        return answer

    finish(do_send_message(conversation=conversation, text="first").answer)
    send = client.post(
        reverse("chat_send", args=[conversation.pk]), {"text": "hi", "after": after}, **HTMX
    )
    assert send.status_code == 200 and "hi" in send.content.decode()
    last = finish(Message.objects.filter(conversation=conversation).latest("pk"))
    regenerate = client.post(
        reverse("chat_regenerate", args=[conversation.pk, last.pk]), {"after": after}, **HTMX
    )
    assert regenerate.status_code == 200


@pytest.mark.parametrize("persona", ["abc", "1.5", "\x00", "9" * 40])
def test_a_malformed_persona_starts_a_conversation_without_one(
    client: Client, persona: str
) -> None:
    user = UserFactory()
    client.force_login(user)
    response = client.post(reverse("conversation_new"), {"persona": persona})
    assert response.status_code == 302
    assert Conversation.objects.get(owner=user).system_prompt == ""


def test_settings_within_limits(client: Client, conversation: Conversation) -> None:
    url = reverse("chat_settings", args=[conversation.pk])
    response = client.post(url, {"temperature": "0.3", "max_new_tokens": "100"}, **HTMX)
    assert response.status_code == 200 and "Saved." in response.content.decode()
    response = client.post(url, {"temperature": "9", "max_new_tokens": "100"}, **HTMX)
    assert response.status_code == 422 and "Temperature must be" in response.content.decode()
    assert "Saved." not in response.content.decode()
    response = client.post(url, {"temperature": "abc", "max_new_tokens": "1"}, **HTMX)
    assert response.status_code == 422
    conversation.refresh_from_db()
    assert conversation.temperature == 0.3


def test_annotator_without_chat_role_is_refused() -> None:
    client = Client()
    user = UserFactory(role=Role.USER)
    user.groups.clear()
    client.force_login(user)
    assert client.get(reverse("conversations")).status_code == 403


def test_htmx_posts_need_the_csrf_token() -> None:
    conversation = ConversationFactory()
    client = Client(enforce_csrf_checks=True)
    client.force_login(conversation.owner)
    url = reverse("chat_send", args=[conversation.pk])
    refused = client.post(url, {"text": "hi"}, **HTMX)
    # A stale page (the session changed in another tab): the reason goes to its notice area,
    # with a status htmx swaps in, instead of a 403 that htmx would drop.
    assert refused.status_code == 422 and "out of date" in refused.content.decode()
    assert (refused["HX-Retarget"], refused["HX-Reswap"]) == ("#notice", "innerHTML")
    assert client.post(url, {"text": "hi"}).status_code == 403  # a plain form: Django's page
    assert not Message.objects.exists()
    page = client.get(reverse("chat", args=[conversation.pk]))
    assert '<p id="notice" class="notice-bar" role="alert"></p>' in page.content.decode()
    token = page.context["csrf_token"]
    response = client.post(url, {"text": "hi"}, HTTP_X_CSRFTOKEN=str(token), **HTMX)
    assert response.status_code == 200


def _without_csrf_tokens(html: str) -> str:
    """Each render masks the CSRF secret afresh."""
    return re.sub(r"\b[A-Za-z0-9]{64}\b", "TOKEN", html)


@pytest.mark.parametrize("whole_thread", [True, False], ids=["thread", "thread-end"])
def test_first_words_filled_into_a_rendered_answer_read_as_if_rendered_with_them(
    whole_thread: bool,
) -> None:
    """A send's response is rendered while the model writes the first words, which are then
    filled in: the same HTML, byte for byte, as the response rendered with them."""
    conversation = ConversationFactory()
    turn = do_send_message(conversation=conversation, text="hello")
    do_start_answer(answer_id=turn.answer.pk, model_version="", dropped_turns=0)
    answer = Message.objects.get(pk=turn.answer.pk)
    request = RequestFactory().post("/", HTTP_HX_REQUEST="true")
    request.user = conversation.owner
    request.htmx = HtmxDetails(request)  # type: ignore[attr-defined]
    words = 'Rivers <b>carve</b> & "shape"\nvalleys </textarea>'

    def render(written: dict[int, str]) -> str:
        fresh = Conversation.objects.get(pk=conversation.pk)
        if whole_thread:
            response = chat_views._thread(request, fresh, retitled=True, written=written)  # type: ignore[arg-type]
        else:
            end = chat_views._ThreadEnd(2)
            response = chat_views._thread_end(request, fresh, end, retitled=True, written=written)  # type: ignore[arg-type]
        return response.content.decode()

    filled = chat_views._fill_first_words(render({}), answer, words)
    assert filled is not None and "<b>carve" not in filled
    assert _without_csrf_tokens(filled) == _without_csrf_tokens(render({answer.pk: words}))
    # rendered with words already (saved before the render): nothing to fill in
    assert chat_views._fill_first_words(render({answer.pk: "Rivers"}), answer, words) is None
