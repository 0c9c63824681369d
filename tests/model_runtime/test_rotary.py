"""Rotary + xPos: a hand-worked value, relative positions, and bf16 safety up to max_seq_len."""

from __future__ import annotations

import math

import torch

from model_runtime.config import PaLMConfig
from model_runtime.rotary import RotaryTables


def _config(**overrides: object) -> PaLMConfig:
    fields: dict[str, object] = {"vocab_size": 8, "dim": 8, "depth": 1, "heads": 1}
    fields.update(overrides)
    return PaLMConfig(**fields)  # type: ignore[arg-type]


def test_hand_worked_rotation_and_xpos_scale() -> None:
    # dim_head 2: one pair, angle = position * base^0 = position; zeta = 0.4 / 1.4 = 2/7.
    # Centre = max_seq_len // 2 = 1, scale_base 1: at position 2 queries scale by (2/7)^1 and
    # keys by (2/7)^-1 = 3.5.
    config = _config(dim_head=2, max_seq_len=2, xpos_scale_base=1)
    tables = RotaryTables.build(config, torch.tensor([[2]]))
    q = tables.rotate_queries(torch.tensor([[[[1.0, 0.0]]]]))  # (B, T, H, dh)
    k = tables.rotate_keys(torch.tensor([[[1.0, 0.0]]]))  # (B, T, dh)
    expected_q = torch.tensor([math.cos(2.0), math.sin(2.0)]) * (2 / 7)
    expected_k = torch.tensor([math.cos(2.0), math.sin(2.0)]) * 3.5
    torch.testing.assert_close(q[0, 0, 0], expected_q)
    torch.testing.assert_close(k[0, 0], expected_k)


def _reference_score(
    config: PaLMConfig, q: torch.Tensor, k: torch.Tensor, q_pos: int, k_pos: int
) -> float:
    """q . k after rotary + xPos, in float64 from the formulas (pairs 2i, 2i + 1)."""
    half = config.dim_head // 2
    q64, k64 = q.double().flatten().tolist(), k.double().flatten().tolist()
    total = 0.0
    centre = config.max_seq_len // 2
    for i in range(half):
        theta = config.rotary_base ** (-2 * i / config.dim_head)
        zeta = (2 * i / config.dim_head + 0.4) / 1.4
        sq = zeta ** ((q_pos - centre) / config.xpos_scale_base) if config.use_xpos else 1.0
        sk = zeta ** (-(k_pos - centre) / config.xpos_scale_base) if config.use_xpos else 1.0

        def rot(a: float, b: float, angle: float) -> tuple[float, float]:
            return a * math.cos(angle) - b * math.sin(angle), b * math.cos(angle) + a * math.sin(
                angle
            )

        qa, qb = rot(q64[2 * i], q64[2 * i + 1], q_pos * theta)
        ka, kb = rot(k64[2 * i], k64[2 * i + 1], k_pos * theta)
        total += (qa * ka + qb * kb) * sq * sk
    return total


def _scores(config: PaLMConfig, q_pos: int, k_pos: int, dtype: torch.dtype) -> tuple[float, float]:
    """(our score with inputs in ``dtype``, float64 reference on the same rounded inputs)."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, config.dim_head, generator=generator).to(dtype)
    k = torch.randn(1, 1, config.dim_head, generator=generator).to(dtype)
    q_rot = RotaryTables.build(config, torch.tensor([[q_pos]])).rotate_queries(q)
    k_rot = RotaryTables.build(config, torch.tensor([[k_pos]])).rotate_keys(k)
    ours = (q_rot[0, 0, 0].double() * k_rot[0, 0].double()).sum().item()
    return ours, _reference_score(config, q, k, q_pos, k_pos)


def test_scores_depend_only_on_relative_position() -> None:
    for use_xpos in (True, False):
        config = _config(dim_head=16, max_seq_len=128, xpos_scale_base=32, use_xpos=use_xpos)
        base, _ = _scores(config, 10, 3, torch.float32)
        shifted, _ = _scores(config, 100, 93, torch.float32)
        assert abs(shifted - base) < 1e-4 * max(1.0, abs(base))


def test_xpos_decays_scores_with_distance() -> None:
    config = _config(dim_head=16, max_seq_len=128, xpos_scale_base=32)
    q = torch.ones(1, 1, 1, 16)
    k = torch.ones(1, 1, 16)
    no_xpos = _config(dim_head=16, max_seq_len=128, xpos_scale_base=32, use_xpos=False)
    for cfg, decays in ((config, True), (no_xpos, False)):
        # rotation of identical vectors at distance 0 leaves them aligned: compare magnitudes
        tables_q = RotaryTables.build(cfg, torch.tensor([[64]]))
        same = (tables_q.rotate_queries(q)[0, 0, 0] * tables_q.rotate_keys(k)[0, 0]).sum()
        assert abs(same.item() - 16.0) < 1e-4  # scales cancel at equal positions
        far_q = tables_q.rotate_queries(q).norm()
        near_q = RotaryTables.build(cfg, torch.tensor([[0]])).rotate_queries(q).norm()
        assert (far_q.item() < near_q.item()) == decays


def test_rotary_matches_float64_reference_up_to_max_seq_len_in_fp32_and_bf16() -> None:
    # Tables are float32 whatever the input dtype, so bf16 inputs lose only the final rounding
    # of the rotated q and k (relative 2^-8 each), at every position up to max_seq_len; a bf16
    # angle (position * frequency) would be off by whole radians past position ~256.
    config = _config(dim_head=64, max_seq_len=4096, xpos_scale_base=512)
    for q_pos, k_pos in ((0, 0), (4095, 4000), (4095, 0), (2048, 17), (300, 299)):
        fp32, exact32 = _scores(config, q_pos, k_pos, torch.float32)
        assert abs(fp32 - exact32) < 1e-3 * max(1.0, abs(exact32)), (q_pos, k_pos)
        bf16, exact16 = _scores(config, q_pos, k_pos, torch.bfloat16)
        assert math.isfinite(bf16)
        assert abs(bf16 - exact16) < 3e-2 * max(1.0, abs(exact16)), (q_pos, k_pos)


def test_joint_rotation_equals_separate_query_and_key_rotation() -> None:
    config = _config(dim_head=8, heads=3, max_seq_len=32, xpos_scale_base=16)
    positions = torch.tensor([[0, 5, 9], [2, 3, 31]])
    tables = RotaryTables.build(config, positions)
    qk = torch.randn(2, 3, 4, 8)  # (B, T, H + 1, dh)
    joint = tables.rotate_joint(qk)
    torch.testing.assert_close(joint[:, :, :3], tables.rotate_queries(qk[:, :, :3]))
    torch.testing.assert_close(joint[:, :, 3], tables.rotate_keys(qk[:, :, 3]))


def test_positions_inside_the_context_come_from_the_table_unchanged() -> None:
    # build() looks positions in [0, max_seq_len) up in a cached table and computes any other
    # (pads may be negative; positions may run past the context): both must agree exactly.
    from model_runtime.rotary import _joint_factors

    config = _config(dim_head=8, heads=2, max_seq_len=32, xpos_scale_base=16)
    inside = torch.tensor([[0, 7, 31], [3, 3, 30]])
    outside = torch.tensor([[-2, 7, 40]])
    for positions in (inside, outside):
        tables = RotaryTables.build(config, positions)
        assert torch.equal(tables.joint, _joint_factors(config, positions))
        assert torch.equal(tables.queries[:, :, 0], tables.joint[:, :, 0])
        assert torch.equal(tables.keys, tables.joint[:, :, config.heads])


def test_a_span_of_positions_equals_building_from_their_arange() -> None:
    # span() serves the default positions (arange(S, S + T) in every row) without a host sync;
    # inside the context, straddling its end, and wholly past it.
    config = _config(dim_head=8, heads=2, max_seq_len=32, xpos_scale_base=16)
    for start, length in ((0, 1), (0, 32), (5, 9), (31, 1), (28, 8), (40, 3)):
        span = RotaryTables.span(config, start, length, torch.device("cpu"))
        built = RotaryTables.build(config, torch.arange(start, start + length)[None])
        for name in ("queries", "keys", "joint"):
            assert torch.equal(getattr(span, name), getattr(built, name)), (start, length, name)


def test_the_model_traces_as_one_graph_under_compile() -> None:
    # No data-dependent branch (a host sync) on the default positions: torch.compile keeps
    # a training step's forward in one graph.
    from model_runtime.palm import PaLM

    model = PaLM(_config(vocab_size=32, dim=16, depth=2, heads=2, dim_head=8, max_seq_len=16))
    explanation = torch._dynamo.explain(model.hidden_states)(torch.randint(0, 32, (2, 8)))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_rotation_passes_gradients_back_to_its_input() -> None:
    # A rotation (times the xPos scale) is linear: the gradient of sum(w * rotate(x)) with
    # respect to x is the transposed rotation of w, here worked out on the float64 reference.
    config = _config(dim=16, heads=2, dim_head=8, max_seq_len=16)
    positions = torch.arange(5)[None]
    tables = RotaryTables.build(config, positions)
    x = torch.randn(1, 5, 3, 8, requires_grad=True)
    weights = torch.randn(1, 5, 3, 8)
    (tables.rotate_joint(x) * weights).sum().backward()
    assert x.grad is not None
    factor = tables.joint.to(torch.complex128)  # (1, 5, 3, 4)
    w_pairs = torch.view_as_complex(weights.double().unflatten(-1, (-1, 2)))
    # d/dx of Re(conj(w) * f * x) over pairs: conj(f) * w (as a real pair)
    expected = torch.view_as_real(factor.conj() * w_pairs).flatten(-2)
    torch.testing.assert_close(x.grad.double(), expected, atol=1e-5, rtol=1e-5)


def test_the_real_factors_torch_compile_uses_rotate_as_the_complex_ones() -> None:
    # Under torch.compile the tables are (real, imaginary) pairs and the rotation is written in
    # real arithmetic (Inductor fuses it); eagerly they are complex: the same factors, the same
    # rotation, float32 and bf16 inputs, contiguous or not.
    from model_runtime.rotary import _joint_factors, _rotate

    config = _config(dim=24, heads=3, dim_head=8, max_seq_len=32, xpos_scale_base=16)
    positions = torch.tensor([[0, 3, 17, 31], [2, 2, 40, 5]])
    complex_factors = _joint_factors(config, positions)
    real_factors = _joint_factors(config, positions, real=True)
    assert real_factors.shape == (*complex_factors.shape, 2)
    torch.testing.assert_close(real_factors, torch.view_as_real(complex_factors))
    fused = torch.randn(2, 4, 40)
    qk = fused[..., :32].view(2, 4, 4, 8)  # strided, as the fused projection's columns are
    for x in (qk, qk.bfloat16()):
        expected = _rotate(x, complex_factors)
        got = _rotate(x, real_factors)
        assert got.dtype == x.dtype
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
