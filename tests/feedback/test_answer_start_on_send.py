"""An answer starts writing when it is sent, before its page opens the stream (under uvicorn,
where ``webapp.asgi`` declares the loop that serves the streams)."""

from __future__ import annotations

import asyncio
import html
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from answer_following import write_here
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.urls import reverse
from django.utils.html import escape
from factories import ConversationFactory
from sse_streams import logged_in_client, parse_events, read_stream

from feedback.inference import factory
from feedback.inference.base import InferenceClient
from feedback.inference.factory import get_inference_client
from feedback.models import Conversation, Message, MessageStatus
from feedback.services import answer_runs
from feedback.services.answer_runs import (
    StreamEvent,
    serve_streams_from,
    start_answer_soon,
    watch_answer,
)
from feedback.services.answer_runs import _follow_from_database as follow_from_database
from feedback.services.chat import (
    do_cancel_answer,
    do_finish_answer,
    do_save_partial_answer,
    do_send_message,
    do_start_answer,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation() -> Iterator[Conversation]:
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=16)
    yield conversation
    serve_streams_from(None)


async def post_send(conversation: Conversation, text: str = "Tell me about the river.") -> str:
    """Send through the view (htmx) with this test's loop serving streams; the response's
    page fragment."""
    serve_streams_from(asyncio.get_running_loop())
    client = await logged_in_client(conversation.owner)
    response = await client.post(
        reverse("chat_send", args=[conversation.pk]), {"text": text}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    return response.content.decode()


async def send_and_wait(conversation: Conversation, *, wait_s: float) -> Message:
    """Send; no page opens a stream. Returns the answer once it closes, or as it stands after
    ``wait_s``."""
    await post_send(conversation)
    answer = await Message.objects.aget(conversation=conversation, role="assistant")
    deadline = time.monotonic() + wait_s
    while answer.is_open and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await answer.arefresh_from_db()
    return answer


def test_the_answer_is_written_before_any_page_watches(
    policy: Path, conversation: Conversation
) -> None:
    async def scenario() -> tuple[Message, bytes]:
        answer = await send_and_wait(conversation, wait_s=60)
        return answer, await read_stream(conversation, answer)

    answer, body = asyncio.run(scenario())
    assert answer.status == MessageStatus.COMPLETE, answer.error
    assert answer.content and answer.first_token_ms is not None
    # A page that opens the stream afterwards gets the whole answer at once, then "done".
    events = parse_events([body])
    assert [kind for kind, _ in events] == ["reset", "done"]
    assert events[0][1] == escape(answer.content)
    assert f'id="msg-{answer.pk}"' in events[1][1]


def send_then_read_stream(
    conversation: Conversation, text: str = "Tell me about the river."
) -> tuple[str, bytes]:
    """Send, then read the answer's stream to its end, as the page does: the send's page
    fragment and the stream's body."""

    async def scenario() -> tuple[str, bytes]:
        page = await post_send(conversation, text)
        answer = await Message.objects.aget(conversation=conversation, role="assistant")
        return page, await read_stream(conversation, answer)

    try:
        return asyncio.run(scenario())
    finally:
        serve_streams_from(None)


def _answer_on_screen(page: str, answer: Message) -> tuple[str, str]:
    """(status class, text) of ``answer`` as a response's thread shows it."""
    article = re.search(rf'class="msg assistant status-(\w+)" id="msg-{answer.pk}"', page)
    body = re.search(rf'id="msg-{answer.pk}-body">([^<]*)<', page)
    assert article and body, page
    return article.group(1), html.unescape(body.group(1))


@pytest.mark.parametrize("client_loaded", [False, True], ids=["policy-loading", "policy-loaded"])
def test_the_send_response_carries_the_answers_first_words(
    policy: Path, settings: Any, client_loaded: bool
) -> None:
    """The page shows the answer's first words with the sent message, before it opens the
    stream, which goes on from there: whether the run claimed the answer (the first send,
    which loads the policy) or the send did (the response then rendered before the words)."""
    settings.CHAT_SEND_WAITS_FOR_ANSWER_S = 30.0  # returns at the first piece: room for CI
    if client_loaded:
        get_inference_client()
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=400)
    page, stream = send_then_read_stream(conversation)
    assert parse_events([stream])[-1][0] == "done"
    answer = Message.objects.get(conversation=conversation, role="assistant")
    status, first_words = _answer_on_screen(page, answer)
    assert status == "streaming" and first_words
    assert answer.status == MessageStatus.COMPLETE and answer.content.startswith(first_words)
    assert len(answer.content) > len(first_words)


def test_a_send_does_not_wait_long_for_a_slow_model(
    policy: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model takes longer than the wait: the send answers without the first words, and
    the answer is written all the same."""
    settings.CHAT_SEND_WAITS_FOR_ANSWER_S = 0.2
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=16)
    load = factory._create

    def slow_load() -> InferenceClient:
        time.sleep(2.0)  # a policy still loading (the fixture's client is not made yet)
        return load()

    monkeypatch.setattr(factory, "_create", slow_load)
    page, _ = send_then_read_stream(conversation, "Hello")
    answer = Message.objects.get(conversation=conversation, role="assistant")
    assert _answer_on_screen(page, answer) == ("pending", "")
    assert answer.status == MessageStatus.COMPLETE and answer.content


def test_a_send_claims_its_answer_itself_once_the_policy_is_loaded(
    policy: Path, conversation: Conversation, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the client made, the send's own thread claims the answer (one trip fewer on the
    first token's path): the answer is streaming when the send answers, however short the
    send's wait; while the policy loads, the run claims it on its database thread."""
    settings.CHAT_SEND_WAITS_FOR_ANSWER_S = 0.0
    claimed_on: list[str] = []
    claim = answer_runs._claim_answer

    def recording_claim(*args: Any) -> Any:
        claimed_on.append(threading.current_thread().name)
        return claim(*args)

    monkeypatch.setattr(answer_runs, "_claim_answer", recording_claim)
    first = asyncio.run(send_and_wait(conversation, wait_s=60))  # loads the policy
    assert first.status == MessageStatus.COMPLETE
    assert claimed_on[0].startswith("answer-runs-db-")

    async def scenario() -> tuple[str, Message]:
        page = await post_send(conversation, "And the sea?")
        answer = await Message.objects.exclude(pk=first.pk).aget(
            conversation=conversation, role="assistant"
        )
        await asyncio.wait_for(answer_runs._runs[answer.pk].task, 60)  # type: ignore[arg-type]
        return page, answer

    page, answer = asyncio.run(scenario())
    assert _answer_on_screen(page, answer)[0] == "streaming"  # as the send left it
    assert len(claimed_on) == 2 and not claimed_on[1].startswith("answer-runs-db-")
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE and answer.content


def test_with_start_on_send_off_the_answer_waits_for_its_page(
    policy: Path, conversation: Conversation, settings: Any
) -> None:
    settings.CHAT_START_ON_SEND = False
    answer = asyncio.run(send_and_wait(conversation, wait_s=0.5))
    assert answer.status == MessageStatus.PENDING
    body = asyncio.run(read_stream(conversation, answer))  # the page's stream starts it
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE and answer.content
    assert parse_events([body])[-1][0] == "done"


def test_without_a_serving_loop_the_answer_waits_for_its_page(
    policy: Path, conversation: Conversation, client: Any
) -> None:
    """The sync test client (like WSGI) has no loop that outlives the request."""
    client.force_login(conversation.owner)
    response = client.post(
        reverse("chat_send", args=[conversation.pk]), {"text": "Hello"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    time.sleep(0.3)
    answer = Message.objects.get(conversation=conversation, role="assistant")
    assert answer.status == MessageStatus.PENDING


def test_regenerate_starts_its_answer_at_once(policy: Path, conversation: Conversation) -> None:
    async def scenario() -> Message:
        first = await send_and_wait(conversation, wait_s=60)
        client = await logged_in_client(conversation.owner)
        response = await client.post(
            reverse("chat_regenerate", args=[conversation.pk, first.pk]),
            headers={"HX-Request": "true"},
        )
        assert response.status_code == 200
        sibling = await Message.objects.exclude(pk=first.pk).aget(
            conversation=conversation, role="assistant"
        )
        deadline = time.monotonic() + 60
        while sibling.is_open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await sibling.arefresh_from_db()
        return sibling

    sibling = asyncio.run(scenario())
    assert sibling.status == MessageStatus.COMPLETE and sibling.content


def test_runs_survive_a_database_restart(policy: Path, conversation: Conversation) -> None:
    """Runs reach the database outside any request; a connection the server dropped is
    replaced before the next answer uses it, as a request's would be."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL to drop the connections")
    first = asyncio.run(send_and_wait(conversation, wait_s=60))
    assert first.status == MessageStatus.COMPLETE
    for executor in answer_runs._RUNS_DB_THREADS:  # every runs' thread holds a connection
        executor.submit(lambda: connection.ensure_connection()).result()
    with connection.cursor() as cursor:  # what a restart does to every other session
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    second_id = do_send_message(conversation=ConversationFactory(), text="Hi").answer.pk

    async def write_the_second() -> None:
        # straight to the run: the test client's own requests would use the dropped connection
        answer_runs._start(second_id, get_inference_client)
        await asyncio.wait_for(answer_runs._runs[second_id].task, 60)  # type: ignore[arg-type]

    asyncio.run(write_the_second())
    second = Message.objects.get(pk=second_id)
    assert second.status == MessageStatus.COMPLETE, second.error


def test_an_answer_another_process_claims_first_is_followed_there(
    policy: Path, conversation: Conversation, settings: Any
) -> None:
    """Two web processes: this one's stream starts a run, but the other process claims the
    answer first; the page then follows that process's writing in the database."""
    settings.STREAM_FLUSH_S = 0.05
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk

    def the_other_process_claims_it_first() -> InferenceClient:
        do_start_answer(answer_id=answer_id, model_version="", dropped_turns=0)
        do_save_partial_answer(answer_id=answer_id, content="Written")
        connection.close()
        return get_inference_client()

    async def scenario() -> list[StreamEvent]:
        async def the_other_process_finishes() -> None:
            # Once this process has found the answer taken (however long its run took to try).
            deadline = time.monotonic() + 20
            while answer_id not in answer_runs._runs and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            run = answer_runs._runs[answer_id]  # forgotten once it has given up: keep it
            while not run.finished and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert run.claimed_elsewhere
            await asyncio.sleep(0.1)  # the page follows it in the database meanwhile
            await sync_to_async(do_finish_answer)(
                answer_id=answer_id, status=MessageStatus.COMPLETE, content="Written elsewhere."
            )

        finishing = asyncio.create_task(the_other_process_finishes())
        events = [e async for e in watch_answer(answer_id, the_other_process_claims_it_first)]
        await finishing
        return events

    events = asyncio.run(scenario())
    shown = ""
    for event in events:
        shown = event.text if event.kind == "reset" else shown + event.text
    assert events[-1].kind == "done" and shown == "Written elsewhere.", events
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE and answer.content == "Written elsewhere."


def test_a_page_watching_from_another_process_keeps_the_answer_going(
    policy: Path, conversation: Conversation, settings: Any
) -> None:
    """No page watches here, but one does through another process (which follows the
    database): the run must not stop for "page closed" (here after 0 s without a watcher)."""
    settings.STREAM_RECONNECT_GRACE_S = 0.0
    settings.STREAM_STOP_CHECK_S = 0.0
    settings.STREAM_FLUSH_S = 0.05
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk

    async def scenario() -> list[StreamEvent]:
        followed: list[StreamEvent] = []

        async def the_other_process_streams_it() -> None:
            async for event in follow_from_database(answer_id):
                followed.append(event)

        following = asyncio.create_task(the_other_process_streams_it())
        await asyncio.sleep(0.2)  # its first "watched" mark is in the cache
        serve_streams_from(asyncio.get_running_loop())
        await sync_to_async(start_answer_soon)(answer_id, get_inference_client)
        await asyncio.wait_for(following, 60)
        return followed

    followed = asyncio.run(scenario())
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE, (answer.finish_reason, answer.error)
    assert followed[-1].kind == "done" and answer.completion_tokens


def test_a_stop_before_the_run_claims_its_answer_wins(
    policy: Path, conversation: Conversation
) -> None:
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk
    do_cancel_answer(answer=Message.objects.get(pk=answer_id))  # Stop, as the run is queued

    async def scenario() -> list[StreamEvent]:
        serve_streams_from(asyncio.get_running_loop())
        await sync_to_async(start_answer_soon)(answer_id, get_inference_client)
        await asyncio.sleep(0)  # the run starts on this loop
        return [e async for e in watch_answer(answer_id, get_inference_client)]

    events = asyncio.run(scenario())
    assert events[-1].kind == "done"
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.CANCELLED and answer.finish_reason == "stopped"
    assert answer.content == "" and answer.completion_tokens is None


def test_a_stream_elsewhere_opens_with_no_fewer_words_than_its_page_shows(
    conversation: Conversation, settings: Any
) -> None:
    """The run tells the send its first words before it saves them: a stream that follows it
    from another process waits for that save, rather than opening with less and wiping from
    the page the words the send's response showed."""
    settings.STREAM_FLUSH_S = 0.05
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk
    do_start_answer(answer_id=answer_id, model_version="", dropped_turns=0)  # runs elsewhere

    async def scenario() -> list[StreamEvent]:
        async def the_other_process_saves_then_finishes() -> None:
            await asyncio.sleep(0.3)
            await sync_to_async(do_save_partial_answer)(answer_id=answer_id, content="First words")
            await asyncio.sleep(0.2)
            await sync_to_async(do_finish_answer)(
                answer_id=answer_id, status=MessageStatus.COMPLETE, content="First words, more."
            )

        writing = asyncio.create_task(the_other_process_saves_then_finishes())
        shown = len("First words")  # what the send's response showed
        events = [e async for e in watch_answer(answer_id, get_inference_client, shown)]
        await writing
        return events

    events = asyncio.run(scenario())
    assert events[0] == StreamEvent("reset", "First words")
    on_page = ""
    for event in events:
        on_page = event.text if event.kind == "reset" else on_page + event.text
    assert events[-1].kind == "done" and on_page == "First words, more."


def test_a_database_error_on_a_live_connection_is_not_retried() -> None:
    """Only a lost connection earns the runs' database work a second try: any other error
    (a deadlock, a constraint) is the caller's, once."""
    calls: list[int] = []

    def work() -> None:
        calls.append(Message.objects.count())  # on a live connection
        raise OperationalError("deadlock detected")

    with pytest.raises(OperationalError):
        asyncio.run(answer_runs._in_db_thread(answer_runs.AnswerRun(answer_id=1), work)())
    assert len(calls) == 1


def test_answers_sent_together_are_claimed_on_threads_of_their_own() -> None:
    # First messages sent together have answer ids two apart (each after its question): they
    # used to share every other thread, so half of them queued behind the others' claims.
    threads = answer_runs._RUNS_DB_THREADS
    runs = [answer_runs.AnswerRun(answer_id=2 * i) for i in range(len(threads))]
    assert {run.db_thread for run in runs} == set(threads)


def test_the_send_is_told_the_first_words_as_saved_not_what_came_after() -> None:
    # The sending thread may wake after more pieces came: it still shows the first words, the
    # text the database holds until the next flush, so a stream in another process that waits
    # for what the page shows does not wait for that flush.
    run = answer_runs.AnswerRun(answer_id=1)
    assert run.text_once_begun(0.01) == ""  # not begun: nothing to show
    run.content = "First"
    run.begin()
    run.content += " words, and more"
    assert run.text_once_begun(0.01) == "First"


def test_an_answer_asking_for_the_whole_context_window_gets_the_room_left(
    policy: Path, settings: Any
) -> None:
    """Max tokens at the model's context length (a value the settings allow): the answer is
    written in the room the question leaves, not refused."""
    context = get_inference_client().context_length()
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=context)
    answer_id = do_send_message(conversation=conversation, text="Hello there").answer.pk
    write_here(answer_id)
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE, answer.error
    assert answer.prompt_tokens is not None and answer.completion_tokens is not None
    assert answer.prompt_tokens + answer.completion_tokens <= context
