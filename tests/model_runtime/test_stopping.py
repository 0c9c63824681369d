"""Stop strings on a growing completion: exact cuts, kept tokens, streaming hold-back."""

from __future__ import annotations

import pytest

from model_runtime.stopping import CompletionText


def feed(completion: CompletionText, pieces: list[str]) -> list[str]:
    """Add pieces as tokens until a stop; return the streamed pieces (closing at the end)."""
    streamed = []
    for piece in pieces:
        stopped = completion.add_token(piece)
        streamed.append(completion.take_stream_piece())
        if stopped:
            break
    else:
        completion.close()
        streamed.append(completion.take_stream_piece())
    return [piece for piece in streamed if piece]


def test_without_stop_strings_everything_is_kept_and_streamed_at_once() -> None:
    completion = CompletionText()
    assert feed(completion, ["Hel", "lo", "!"]) == ["Hel", "lo", "!"]
    assert completion.text == "Hello!" and completion.kept_tokens == 3
    assert not completion.stopped


def test_stop_string_inside_one_token_cuts_exactly_before_it() -> None:
    completion = CompletionText(["\nUser:"])
    feed(completion, ["Hi", " there.\nUser: next", "never"])
    assert completion.stopped
    assert completion.text == "Hi there."
    assert completion.kept_tokens == 2  # the straddling token is kept


def test_stop_string_spanning_tokens_on_a_boundary_drops_its_tokens() -> None:
    completion = CompletionText(["END"])
    feed(completion, ["ok ", "E", "N", "D", "x"])
    assert completion.text == "ok "
    assert completion.kept_tokens == 1  # "E", "N", "D" start at or after the cut


def test_earliest_stop_string_wins_among_those_completed_by_the_same_token() -> None:
    completion = CompletionText(["bc", "abcd"])
    feed(completion, ["xab", "cd"])
    assert completion.text == "x"  # both complete with "cd"; "abcd" starts first


def test_generation_stops_at_the_first_stop_string_to_complete() -> None:
    completion = CompletionText(["bc", "abcd"])
    feed(completion, ["xabc", "d"])
    assert completion.text == "xa"


def test_stop_at_the_very_start_keeps_nothing() -> None:
    completion = CompletionText(["##"])
    feed(completion, ["##", "more"])
    assert completion.text == "" and completion.kept_tokens == 0


def test_empty_pieces_take_the_offset_of_the_character_they_begin() -> None:
    # "é" arrives as two byte tokens: the first decodes to "" and starts where "é" starts.
    completion = CompletionText(["é"])
    feed(completion, ["a", "", "é", "b"])
    assert completion.text == "a" and completion.kept_tokens == 1


def test_streaming_holds_back_a_possible_stop_prefix_and_releases_it_when_refuted() -> None:
    completion = CompletionText(["</s>"])
    assert completion.add_token("text <") is False
    assert completion.take_stream_piece() == "text "
    assert completion.add_token("/") is False
    assert completion.take_stream_piece() == ""
    assert completion.add_token("x") is False  # "</x" cannot start "</s>": release it
    assert completion.take_stream_piece() == "</x"


def test_streaming_never_shows_any_part_of_a_stop_string() -> None:
    completion = CompletionText(["STOP"])
    streamed = feed(completion, ["go S", "T", "O", "P", "after"])
    assert "".join(streamed) == "go " == completion.text


def test_close_releases_held_text() -> None:
    completion = CompletionText(["abc"])
    streamed = feed(completion, ["x", "ab"])
    assert "".join(streamed) == "xab" == completion.text


def test_tail_text_can_complete_a_stop_string() -> None:
    completion = CompletionText(["\ufffd"])
    completion.add_token("ok")
    assert completion.add_tail("\ufffd")
    assert completion.text == "ok" and completion.kept_tokens == 1


def test_adding_after_the_end_is_an_error() -> None:
    completion = CompletionText(["x"])
    completion.add_token("x")
    with pytest.raises(RuntimeError, match="already ended"):
        completion.add_token("y")


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        CompletionText([""])
