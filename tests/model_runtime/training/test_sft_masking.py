"""SFT: the loss sees assistant tokens (and the <|end|> closing each assistant turn) only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model_runtime.checkpoints import load_checkpoint
from model_runtime.config import PaLMConfig
from model_runtime.palm import PaLM
from model_runtime.tokenizer import ChatMessage, ChatTokenizer
from model_runtime.training.config import TrainConfig
from model_runtime.training.data import IGNORE_INDEX, pack_chats, read_conversations
from model_runtime.training.step import lm_loss_sum
from model_runtime.training.trainer import Trainer

CHAT = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "the cat sat"),
    ChatMessage("assistant", "a dog ran"),
    ChatMessage("user", "and then"),
    ChatMessage("assistant", "the bird sang"),
]


def hand_layout(tok: ChatTokenizer) -> tuple[list[int], list[bool]]:
    """The chat's ids built segment by segment, with whether each id is an assistant target."""
    ids: list[int] = []
    target: list[bool] = []
    headers = {"system": tok.system_id, "user": tok.user_id, "assistant": tok.assistant_id}
    for message in CHAT:
        text = tok.encode_text(message.content)
        mine = message.role == "assistant"
        ids += [headers[message.role], *text, tok.end_id]
        target += [False] + [mine] * len(text) + [mine]
    return ids, target


def test_label_vector_of_a_hand_made_chat(tokenizer: ChatTokenizer) -> None:
    ids, target = hand_layout(tokenizer)
    encoding = tokenizer.encode_chat(CHAT, add_generation_prompt=False)
    assert encoding.ids == ids
    seq_len = len(ids) - 1 + 3  # three pads at the end
    rows = pack_chats(
        [encoding], seq_len=seq_len, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, packing=False
    )
    expected = [ids[j + 1] if target[j + 1] else IGNORE_INDEX for j in range(len(ids) - 1)]
    expected += [IGNORE_INDEX] * 3
    assert rows.labels_of(0) == expected
    labelled = [x for x in expected if x != IGNORE_INDEX]
    a_dog_ran = tokenizer.encode_text("a dog ran")
    the_bird_sang = tokenizer.encode_text("the bird sang")
    assert labelled == [*a_dog_ran, tokenizer.end_id, *the_bird_sang, tokenizer.end_id]
    batch = rows.batch([0])
    assert batch.inputs[0].tolist() == [*ids, tokenizer.pad_id, tokenizer.pad_id]


def test_packing_joins_whole_chats_with_an_unlabelled_eos(tokenizer: ChatTokenizer) -> None:
    short = [ChatMessage("user", "hi"), ChatMessage("assistant", "yo")]
    enc = tokenizer.encode_chat(short, add_generation_prompt=False)
    n = len(enc.ids)
    rows = pack_chats(
        [enc, enc, enc],
        seq_len=2 * n,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        packing=True,
    )
    # Two chats + EOS fill 2n + 1 ids = one row; the third starts a new row.
    assert len(rows) == 2
    assert rows.tokens[0].tolist() == [*enc.ids, tokenizer.eos_id, *enc.ids]
    labels = rows.labels_of(0)
    assert labels[n - 1] == IGNORE_INDEX  # predicting the EOS
    assert labels[n] == IGNORE_INDEX  # predicting the next chat's <|user|>
    assistant_labels = [x for x in labels if x != IGNORE_INDEX]
    yo = tokenizer.encode_text("yo")
    assert assistant_labels == [*yo, tokenizer.end_id] * 2
    unpacked = pack_chats(
        [enc, enc, enc],
        seq_len=2 * n,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        packing=False,
    )
    assert len(unpacked) == 3 and tokenizer.eos_id not in unpacked.tokens.tolist()[0]


def test_long_chats_are_cut_and_chats_without_a_target_left_out(tokenizer: ChatTokenizer) -> None:
    ids, target = hand_layout(tokenizer)
    enc = tokenizer.encode_chat(CHAT, add_generation_prompt=False)
    first = target.index(True)  # the first assistant id
    seq_len = first + 1  # rows of first + 2 ids: two assistant targets survive the cut
    cut = pack_chats(
        [enc], seq_len=seq_len, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, packing=True
    )
    assert cut.tokens.tolist() == [ids[: seq_len + 1]]
    assert cut.num_targets == sum(target[1 : seq_len + 1])
    user_only = tokenizer.encode_chat([ChatMessage("user", "x")], add_generation_prompt=False)
    both = pack_chats(
        [user_only, enc],
        seq_len=seq_len,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        packing=False,
    )
    assert len(both) == 1  # the user-only chat has nothing to learn and is dropped
    with pytest.raises(ValueError, match="no conversation with an assistant turn"):
        pack_chats(
            [user_only, enc],
            seq_len=first - 1,  # the cut ends before any assistant id
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            packing=False,
        )


def test_masked_positions_get_no_gradient_and_do_not_enter_the_loss(
    tokenizer: ChatTokenizer,
) -> None:
    ids, target = hand_layout(tokenizer)
    rows = pack_chats(
        [tokenizer.encode_chat(CHAT, add_generation_prompt=False)],
        seq_len=len(ids) + 1,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        packing=False,
    )
    batch = rows.batch([0])
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=tokenizer.vocab_size, dim=32, depth=2, heads=2, dim_head=16)
    model = PaLM(config)
    logits = model(batch.inputs)  # (1, T, V)
    logits.retain_grad()
    loss = lm_loss_sum(logits, batch.labels)
    loss.backward()
    assert logits.grad is not None
    masked = batch.labels[0] == IGNORE_INDEX  # (T,)
    per_position = logits.grad[0].abs().sum(-1)  # (T,)
    assert torch.all(per_position[masked] == 0)
    assert torch.all(per_position[~masked] > 0)
    # The loss is the sum of -log p(label) over exactly the assistant targets.
    logp = torch.log_softmax(logits[0].detach(), dim=-1)
    positions = [j for j in range(len(ids) - 1) if target[j + 1]]
    manual = -sum(logp[j, ids[j + 1]] for j in positions)
    assert torch.allclose(loss.detach(), manual, atol=1e-4)
    # Changing what sits at the masked label positions changes nothing.
    other = batch.labels.clone()
    other[0, masked] = IGNORE_INDEX
    assert torch.equal(lm_loss_sum(logits.detach(), other), loss.detach())


def test_sft_from_a_pretrained_checkpoint_trains_the_last_block_only(
    make_train_config: Callable[..., TrainConfig],
    chat_files: tuple[Path, Path],
    tiny_model_fields: dict[str, int],
) -> None:
    pretrain = make_train_config(max_steps=2, model={**tiny_model_fields, "max_seq_len": 128})
    pre = Trainer(pretrain)
    pre.setup()
    pre.train()
    base = Path(pretrain.output_dir) / "final"
    sft = make_train_config(
        stage="sft",
        model=None,
        init_from=str(base),
        tokenizer=None,
        train_files=[str(chat_files[0])],
        eval_files=[str(chat_files[1])],
        seq_len=128,
        max_steps=3,
        train_last_blocks=1,
    )
    trainer = Trainer(sft)
    trainer.setup()
    rows = trainer.train_rows
    # Every target is an assistant id or <|end|>: never a role header, EOS or pad.
    targets = rows.tokens[:, 1:][rows.targets[:, 1:]]
    tok = trainer.tokenizer
    never = {tok.pad_id, tok.eos_id, tok.system_id, tok.user_id, tok.assistant_id}
    assert not never & set(targets.tolist())
    conversations = read_conversations([chat_files[0]])
    lengths = [
        len(trainer.tokenizer.encode_chat(c, add_generation_prompt=False).ids)
        for c in conversations
    ]
    assert max(lengths) <= 129  # no chat is cut, so every assistant turn keeps its <|end|>
    assistant_turns = sum(m.role == "assistant" for c in conversations for m in c)
    assert int((targets == trainer.tokenizer.end_id).sum()) == assistant_turns
    result = trainer.train()
    assert result.finished and result.eval is not None and result.eval.tokens > 0
    before = load_checkpoint(base).model.state_dict()
    after = load_checkpoint(Path(sft.output_dir) / "final").model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("blocks.1.") for name in changed)
    assert {n for n in before if n.startswith("blocks.1.")} == changed
