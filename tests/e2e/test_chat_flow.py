"""In Chromium against uvicorn: chat, watch the answer stream in, stop, regenerate, switch
siblings, rename and delete."""

from __future__ import annotations

import re

import pytest
from factories import PASSWORD, UserFactory
from playwright.sync_api import Page, expect

from feedback.models import ChatLimits, Conversation, Message, MessageStatus

pytestmark = pytest.mark.e2e


def log_in(page: Page, username: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def start_chatting(page: Page, username: str, **limits: int) -> None:
    """With these chat limits, a new user logs in and opens a new conversation."""
    current = ChatLimits.current()
    for name, value in limits.items():
        setattr(current, name, value)
    current.save()
    UserFactory(username=username)
    log_in(page, username)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Chat").click()
    page.get_by_role("button", name="New chat").click()


def test_chat_end_to_end(page: Page) -> None:
    start_chatting(page, "frank", max_new_tokens=4000, default_new_tokens=60)
    expect(page.get_by_role("heading", name="New conversation")).to_be_visible()

    # Enter sends; the answer streams in piece by piece and ends as a finished message.
    box = page.get_by_label("Message", exact=True)
    box.fill("Tell me about the river.")
    box.press("Enter")
    expect(page.locator("article.msg.user .body")).to_have_text("Tell me about the river.")
    answer = page.locator("article.msg.assistant").last
    # the first answer after the server started: the policy may still be loading
    expect(answer.locator(".body")).not_to_be_empty(timeout=30_000)
    expect(answer.get_by_role("button", name="Regenerate")).to_be_visible(timeout=30_000)
    expect(box).to_have_value("")  # the composer was cleared
    first = Message.objects.filter(role="assistant").get()
    assert first.status == MessageStatus.COMPLETE and first.content
    expect(page.locator("h1")).to_have_text("Tell me about the river.")
    expect(page.locator(".sidebar li.current a")).to_have_text("Tell me about the river.")

    # Regenerate: a second version appears and the page shows 2/2, then switch back to 1/2.
    answer.get_by_role("button", name="Regenerate").click()
    answer = page.locator("article.msg.assistant").last
    expect(answer.locator(".siblings .count")).to_have_text("2/2")  # the new version is on
    expect(answer).to_have_class(re.compile(r"\bstatus-complete\b"), timeout=30_000)
    expect(answer.get_by_role("button", name="Regenerate")).to_be_visible()
    answer.get_by_role("button", name="Previous version").click()
    expect(page.locator("article.msg.assistant .siblings .count")).to_have_text("1/2")

    # A long answer, stopped part-way: the text written so far stays, marked as stopped.
    page.locator("summary", has_text="Answer settings").click()
    page.get_by_label("Max tokens").fill("4000")
    page.locator("#chat-settings").get_by_role("button", name="Save").click()
    # On a phone: while the answer is written, Stop takes Send's place in the composer.
    chats = page.get_by_role("navigation", name="Chats")
    expect(chats).to_be_hidden()  # the sidebar has its links on a wide screen
    page.set_viewport_size({"width": 390, "height": 844})
    # ... and on a phone, where the sidebar is hidden, this line above the title has them.
    expect(page.locator(".sidebar")).to_be_hidden()
    expect(chats.get_by_role("link", name="All conversations")).to_be_visible()
    expect(chats.get_by_role("button", name="New chat")).to_be_visible()
    box.fill("Now a long one, please.")
    send, stop = page.get_by_role("button", name="Send"), page.get_by_role("button", name="Stop")
    send.click()
    expect(stop).to_be_visible()
    expect(send).to_be_hidden()
    box.fill("A draft for later.")
    box.press("Enter")  # waits while the answer is written
    expect(page.locator(".siblings").first).to_be_hidden()  # so do the other versions
    composer, button = page.locator("#composer").bounding_box(), stop.bounding_box()
    assert composer and button and button["y"] >= composer["y"]
    assert button["y"] + button["height"] <= min(composer["y"] + composer["height"], 844)
    stop.click()
    expect(page.locator("article.msg.assistant").last.locator(".state")).to_have_text("Stopped.")
    # The send appended its turn below the version on screen: two turns, nothing repeated.
    expect(page.locator("#thread > article.msg")).to_have_count(4)
    expect(send).to_be_visible()
    expect(stop).to_be_hidden()
    expect(box).to_have_value("A draft for later.")
    expect(page.locator(".siblings").first).to_be_visible()
    assert Message.objects.filter(content="A draft for later.").count() == 0
    box.fill("")
    stopped = Message.objects.filter(role="assistant").order_by("-id").first()
    assert stopped is not None and stopped.status == MessageStatus.CANCELLED

    # Rename, then delete from the chat page.
    page.locator("summary", has_text="Rename").click()
    page.get_by_label("Title").fill("River talk")
    page.locator("#chat-title").get_by_role("button", name="Save").click()
    expect(page.locator("h1")).to_have_text("River talk")
    expect(page.locator(".sidebar li.current a")).to_have_text("River talk")
    expect(page).to_have_title("River talk · palmloop")  # the browser tab's too
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Conversations")).to_be_visible()
    assert not Conversation.objects.exists()


def test_a_refused_message_shows_why_and_keeps_the_draft(page: Page) -> None:
    # No message allowed at all: the refusal does not hang on the rate limiter's clock.
    start_chatting(page, "grace", messages_per_minute=0)
    box = page.get_by_label("Message", exact=True)
    box.fill("Too soon.")
    box.press("Enter")
    # The reason appears in the thread, on the styled page; the draft is still there.
    expect(page.locator("#thread .error")).to_have_text("You are sending too fast; wait a minute.")
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(box).to_have_value("Too soon.")
    assert not Message.objects.exists()
    # A title that is only spaces: the reason shows beside the title, which stays.
    page.locator("summary", has_text="Rename").click()
    page.get_by_label("Title").fill("   ")
    page.locator("#chat-title").get_by_role("button", name="Save").click()
    expect(page.locator("#chat-title .error")).to_have_text("A title cannot be empty.")
    expect(page.locator("h1")).to_have_text("New conversation")


def test_a_page_gone_stale_says_so_and_keeps_the_draft(page: Page) -> None:
    """The session changed in another tab, so the page's CSRF token no longer matches."""
    start_chatting(page, "heidi")
    origin = re.match(r"https?://[^/]+", page.url)
    assert origin
    page.context.add_cookies([{"name": "csrftoken", "value": "x" * 32, "url": origin.group(0)}])
    box = page.get_by_label("Message", exact=True)
    box.fill("Still here?")
    box.press("Enter")
    expect(page.locator("#notice")).to_contain_text("This page is out of date")
    expect(box).to_have_value("Still here?")
    assert not Message.objects.exists()


def test_a_failed_request_says_so_and_keeps_the_draft(
    page: Page, expected_console_errors: list[str]
) -> None:
    # 503: a proxy whose web process is down (a 500 would meet django-htmx's DEBUG page here)
    expected_console_errors += ["503", "ERR_FAILED", "htmx:sendError", "htmx:afterRequest"]
    start_chatting(page, "ivan")
    box = page.get_by_label("Message", exact=True)
    box.fill("Hello?")
    page.route("**/send/", lambda route: route.fulfill(status=503, body="down"))
    box.press("Enter")
    expect(page.locator("#notice")).to_contain_text("The server failed to do that (error 503)")
    expect(box).to_have_value("Hello?")
    page.unroute("**/send/")
    page.route("**/send/", lambda route: route.abort())
    box.press("Enter")
    expect(page.locator("#notice")).to_contain_text("Could not reach the server")
    expect(box).to_have_value("Hello?")
    page.unroute("**/send/")
    box.press("Enter")  # the server again: the message goes, the notice clears
    expect(page.locator("article.msg.user .body")).to_have_text("Hello?")
    expect(page.locator("#notice")).to_be_empty()


def test_a_send_appends_its_turn_and_leaves_the_page_above_as_it_was(page: Page) -> None:
    start_chatting(page, "heidi", max_message_chars=40, default_new_tokens=8)
    box = page.get_by_label("Message", exact=True)
    box.fill("Hello there.")
    box.press("Enter")
    answer = page.locator("article.msg.assistant").last
    expect(answer).to_have_class(re.compile(r"\bstatus-complete\b"), timeout=30_000)
    # A refusal replaces the thread, with its reason at the end (the box's maxlength would
    # stop a person typing this much; pasted through a script it reaches the server).
    box.evaluate("box => box.removeAttribute('maxlength')")
    box.fill("x" * 41)
    box.press("Enter")
    expect(page.locator("#thread .error")).to_contain_text("the limit is 40")
    # An Edit left open above, then a send: the turn is appended, the Edit stays open, the
    # reason of the refusal goes.
    page.locator("article.msg.user summary", has_text="Edit").click()
    box.fill("And again.")
    box.press("Enter")
    expect(page.locator("#thread > article.msg")).to_have_count(4)
    expect(page.locator("#thread > article.msg.user .body").last).to_have_text("And again.")
    expect(page.locator("article.msg.user details.edit").first).to_have_attribute("open", "")
    expect(page.locator("#thread .error")).to_have_count(0)
    expect(page.locator("article.msg.assistant").last).to_have_class(
        re.compile(r"\bstatus-complete\b"), timeout=30_000
    )
    # Edit the last question: its new version and a new answer take the old two's place.
    last_question = page.locator("#thread > article.msg.user").last
    last_question.locator("summary", has_text="Edit").click()
    edited = last_question.get_by_label("Edited message")
    edited.fill("And once more.")
    edited.press("Shift+Enter")  # a new line, as in the composer
    expect(edited).to_have_value("And once more.\n")
    edited.press("Backspace")
    edited.press("Enter")  # sends, as in the composer
    expect(page.locator("#thread > article.msg")).to_have_count(4)
    question = page.locator("#thread > article.msg.user").last
    expect(question.locator(".body")).to_have_text("And once more.")
    expect(question.locator(".siblings .count")).to_have_text("2/2")
    expect(page.locator("article.msg.user details.edit").first).to_have_attribute("open", "")
    expect(page.locator("article.msg.assistant").last).to_have_class(
        re.compile(r"\bstatus-complete\b"), timeout=30_000
    )


def test_a_send_refused_while_another_tab_answers_says_why_until_that_answer_ends(
    page: Page,
) -> None:
    start_chatting(page, "judy", max_new_tokens=4000, default_new_tokens=4000)
    other = page.context.new_page()  # the same conversation in a second tab
    other.goto(page.url)
    box = page.get_by_label("Message", exact=True)
    box.fill("A long one, please.")
    box.press("Enter")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    # The second tab's page was loaded before: it sends, and is refused with the reason, the
    # answer being written (which it now follows) and its draft kept.
    other_box = other.get_by_label("Message", exact=True)
    other_box.fill("Me too.")
    other_box.press("Enter")
    expect(other.locator("#thread .error")).to_have_text(
        "An answer is still being written: wait for it or stop it."
    )
    expect(other.locator("article.msg.assistant[sse-connect]")).to_have_count(1)
    expect(other_box).to_have_value("Me too.")
    # The first tab stops the answer: in the second, the answer ends and the reason goes.
    page.get_by_role("button", name="Stop").click()
    expect(other.locator("article.msg.assistant .state")).to_have_text("Stopped.")
    expect(other.locator("#thread .error")).to_have_count(0)
    other_box.press("Enter")  # and now the draft goes
    expect(other.locator("#thread > article.msg.user .body").last).to_have_text("Me too.")
    expect(other_box).to_have_value("")


PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


@pytest.mark.parametrize("browser_context_options", [PHONE], ids=["phone"])
def test_on_a_phone_enter_starts_a_new_line_and_the_button_sends(page: Page) -> None:
    """A soft keyboard has no Shift+Enter: on a touch screen Enter adds a line, Send sends."""
    start_chatting(page, "tess", default_new_tokens=8)
    box = page.get_by_label("Message", exact=True)
    expect(box).to_have_attribute("placeholder", "Message (Send sends, Enter starts a new line)")
    box.fill("First line")
    box.press("Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("First line\nsecond line")
    expect(page.locator("article.msg")).to_have_count(0)  # nothing was sent
    page.get_by_role("button", name="Send").click()
    expect(page.locator("article.msg.user .body")).to_have_text(
        re.compile(r"First line\s+second line")
    )
    expect(page.locator("article.msg.assistant")).to_have_class(
        re.compile(r"\bstatus-complete\b"), timeout=30_000
    )
    assert Message.objects.get(role="user").content == "First line\nsecond line"
