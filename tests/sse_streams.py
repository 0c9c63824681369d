"""Reading an answer's Server-Sent Events stream through Django's ASGI test client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient
from django.urls import reverse

from feedback.models import Conversation, Message


async def logged_in_client(user: User) -> AsyncClient:
    client = AsyncClient()
    await sync_to_async(client.force_login)(user)
    return client


async def open_stream(conversation: Conversation, answer: Message) -> AsyncIterator[bytes]:
    """The owner's stream of ``answer``: its chunks as they arrive (200 and SSE checked)."""
    client = await logged_in_client(conversation.owner)
    response = await client.get(reverse("chat_stream", args=[conversation.pk, answer.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    return response.streaming_content  # type: ignore[return-value]


async def read_stream(conversation: Conversation, answer: Message) -> bytes:
    """The owner's whole stream of ``answer``, once it ends."""
    return b"".join([chunk async for chunk in await open_stream(conversation, answer)])


def parse_events(chunks: list[bytes]) -> list[tuple[str, str]]:
    """(event, data) of each SSE event in ``chunks``, read as a browser reads them: lines end at
    CRLF, CR or LF (nothing else), a blank line ends an event, its data lines are joined with LF,
    comment lines and lines without a field are skipped."""
    events = []
    name, data = "", []
    for line in re.split(r"\r\n|\r|\n", b"".join(chunks).decode()):
        if not line:
            if data:
                events.append((name or "message", "\n".join(data)))
            name, data = "", []
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
    return events
