"""Byte-level BPE token ids back to text: all at once, or piece by piece while streaming.

Byte-level BPE (the GPT-2 scheme) spells each byte 0..255 as one printable unicode character, so
every ordinary token is a string over that 256-character alphabet and stands for a byte string.
Text is the UTF-8 decoding of the concatenated bytes of the tokens, with control tokens
contributing nothing; byte sequences that are not valid UTF-8 become U+FFFD (the codec's
"replace" rule), the same way whether decoded at once or incrementally.
"""

import codecs
from collections.abc import Iterable, Mapping, Sequence


def _byte_level_alphabet() -> dict[str, int]:
    """Map each character of the byte-level alphabet to the byte it spells.

    Bytes whose Latin-1 character is visible and not a space stand for themselves; the other 68
    bytes (controls, space, NBSP, soft hyphen, ...) are given the characters U+0100, U+0101, ...
    in increasing byte order.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    char_of_byte = {byte: chr(byte) for byte in visible}
    next_code_point = 256
    for byte in range(256):
        if byte not in char_of_byte:
            char_of_byte[byte] = chr(next_code_point)
            next_code_point += 1
    return {char: byte for byte, char in char_of_byte.items()}


BYTE_OF_CHAR: Mapping[str, int] = _byte_level_alphabet()
"""The byte-level alphabet: 256 characters, each standing for one byte."""


def token_string_to_bytes(token: str) -> bytes:
    """The bytes a byte-level token string stands for; ValueError if it leaves the alphabet."""
    try:
        return bytes(BYTE_OF_CHAR[char] for char in token)
    except KeyError as error:
        raise ValueError(
            f"token {token!r} has a character outside the byte-level alphabet: {error.args[0]!r}"
        ) from None


def _bytes_of(token_bytes: Sequence[bytes], token_id: int) -> bytes:
    if not 0 <= token_id < len(token_bytes):
        raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(token_bytes)})")
    return token_bytes[token_id]


def decode_ids(token_bytes: Sequence[bytes], ids: Iterable[int]) -> str:
    """Decode ids with a table of per-id bytes (control ids map to b"").

    Raises ValueError for an id outside [0, len(token_bytes)).
    """
    data = b"".join(_bytes_of(token_bytes, token_id) for token_id in ids)
    return data.decode("utf-8", errors="replace")


class IncrementalDecoder:
    """Streams the text of a growing id sequence without splitting a multi-byte character.

    `push(id)` returns the text completed by that id: bytes of a character still incomplete are
    held back (at most 3) until a later id completes it; control ids add nothing. `flush()` ends
    the stream: it returns what the held bytes decode to (U+FFFD for an unfinished character) and
    resets the decoder for a new stream. For any ids, the pieces of `push` followed by `flush`
    concatenate to `decode_ids(token_bytes, ids)`.
    """

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly "")."""
        return self._utf8.decode(_bytes_of(self._token_bytes, token_id))

    def flush(self) -> str:
        """End the stream: return the text of any held bytes and reset."""
        tail = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return tail
