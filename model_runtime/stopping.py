"""Stop strings on a completion whose text grows one token at a time.

The cut rule (what :class:`CompletionText` keeps once a stop string appears):

- ``text`` ends exactly before the first occurrence of any stop string (the earliest start
  wins); the stop string itself and everything after it are dropped.
- A token is kept when its text starts before the cut. A token that straddles the cut (part
  of its text before the stop string, part inside it) is kept, so ``text`` is always a prefix of
  the kept tokens' decoded text, and equal to it when the cut falls on a token boundary.
  A token whose bytes only begin a multi-byte character (decoded text "") starts where that
  character starts.

For streaming, text that could still turn out to be the beginning of a stop string is held
back until the next tokens settle it, so a streamed stop string never has to be taken back.
"""

from __future__ import annotations

from collections.abc import Sequence


class CompletionText:
    """The text of one completion as its tokens arrive, with stop-string detection.

    Call :meth:`add_token` with each token's newly decoded text (possibly ""), :meth:`add_tail`
    for text flushed at the end without a token, and :meth:`close` when generation ends.
    :meth:`take_stream_piece` returns the text that is safe to show since the previous call.
    """

    def __init__(self, stop_strings: Sequence[str] = ()) -> None:
        if any(not stop for stop in stop_strings):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(stop_strings)
        self._longest_stop = max((len(stop) for stop in self._stops), default=0)
        self._text = ""
        self._token_starts: list[int] = []  # text offset where each token's text begins
        self._cut: int | None = None
        self._closed = False
        self._streamed = 0

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared."""
        return self._cut is not None

    @property
    def text(self) -> str:
        """The completion text, cut before the stop string if one appeared."""
        return self._text if self._cut is None else self._text[: self._cut]

    @property
    def kept_tokens(self) -> int:
        """How many of the tokens added so far belong to the completion (see the cut rule)."""
        if self._cut is None:
            return len(self._token_starts)
        cut = self._cut
        return sum(1 for start in self._token_starts if start < cut)

    def add_token(self, piece: str) -> bool:
        """Append the text one token completed. Returns True if a stop string now appears."""
        self._check_open()
        self._token_starts.append(len(self._text))
        return self._append(piece)

    def add_tail(self, piece: str) -> bool:
        """Append text that belongs to no new token (a decoder's final flush)."""
        self._check_open()
        return self._append(piece)

    def close(self) -> None:
        """Generation ended: nothing is held back any more."""
        self._closed = True

    def take_stream_piece(self) -> str:
        """Text that became safe to show since the last call ("" if none)."""
        end = len(self.text) if (self.stopped or self._closed) else self._safe_end()
        piece = self._text[self._streamed : end]
        self._streamed = max(self._streamed, end)
        return piece

    def _check_open(self) -> None:
        if self._cut is not None or self._closed:
            raise RuntimeError("the completion already ended")

    def _append(self, piece: str) -> bool:
        # A new match must end inside the new piece, so it starts at most len(stop) - 1 earlier.
        search_from = max(0, len(self._text) - self._longest_stop + 1)
        self._text += piece
        if not piece or not self._stops:
            return False
        starts = [self._text.find(stop, search_from) for stop in self._stops]
        found = [start for start in starts if start >= 0]
        if found:
            self._cut = min(found)
            return True
        return False

    def _safe_end(self) -> int:
        """End of the text that cannot be the start of a stop string."""
        text = self._text
        for size in range(min(self._longest_stop - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return len(text) - size
        return len(text)
