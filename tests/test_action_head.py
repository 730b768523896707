"""The bridge-attention head against a literal re-statement of upstream's arithmetic."""

from __future__ import annotations

import pytest
import torch
from testkit import literal_block, literal_rope

from vla_lab.model.action_head import L1RegressionActionHead, UpstreamRoPE, apply_rope, rotate_interleaved


def test_rope_matches_literal_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    rope = UpstreamRoPE(8).double()
    cos, sin = rope(5, torch.float64)
    torch.testing.assert_close(apply_rope(x, cos, sin), literal_rope(x, 5))


def test_rotate_interleaved():
    x = torch.arange(6.0)
    assert rotate_interleaved(x).tolist() == [-1.0, 0.0, -3.0, 2.0, -5.0, 4.0]


def test_rope_positions_follow_buffer_dtype():
    rope = UpstreamRoPE(8).to(torch.bfloat16)
    cos, _ = rope(300, torch.float32)
    # In bf16 the position 257 is not representable: upstream's bf16 head sees it as 256.
    torch.testing.assert_close(cos[257], cos[256])


@pytest.mark.parametrize("version", ["v1", "pro"])
def test_head_matches_literal_restatement(version):
    torch.manual_seed(0)
    dim, layers, chunk, adim, nq, nt = 16, 3, 4, 3, 5, 7
    head = L1RegressionActionHead(dim, layers, chunk, adim, version=version, num_heads=2).double().eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    task = torch.randn(2, layers + 1, nt, dim, dtype=torch.float64)
    queries = torch.randn(2, layers + 1, nq, dim, dtype=torch.float64)
    proprio = torch.randn(2, dim, dtype=torch.float64)
    with torch.no_grad():
        ours = head(task, queries, proprio)
        m = head.model
        x = torch.zeros(2, chunk, adim * dim, dtype=torch.float64)
        x = torch.relu(m.fc1(m.layer_norm1(x)))
        for i, block in enumerate(m.mlp_resnet_blocks):
            adapter = torch.cat([queries[:, i + 1], proprio[:, None]], 1)
            x = literal_block(block, x, adapter, task[:, i + 1], version)
        ref = m.fc2(m.layer_norm2(x))
    torch.testing.assert_close(ours, ref)


def test_zero_gate_keeps_task_logits_at_zero():
    torch.manual_seed(0)
    head = L1RegressionActionHead(16, 2, 4, 3, version="pro", num_heads=2).eval()
    records = []
    head.recorder = lambda i, w, g: records.append((i, w.detach().clone(), g.detach().clone()))
    task, queries = torch.randn(1, 3, 6, 16), torch.randn(1, 3, 5, 16)
    with torch.no_grad():
        head(task, queries, torch.randn(1, 16))
    assert [r[0] for r in records] == [0, 1]
    for _, weights, gate in records:
        assert gate.item() == 0.0
        task_part = weights[..., -6:]
        # a gate of 0 leaves every task key with logit 0: equal, nonzero weights within a row
        torch.testing.assert_close(task_part, task_part[..., :1].expand_as(task_part))
        assert torch.all(task_part > 0)
        assert weights.shape[-1] == 4 + 6 + 6  # self (chunk) + adapter (5 queries + proprio) + task


def test_training_noise_only_in_training_mode():
    torch.manual_seed(0)
    head = L1RegressionActionHead(8, 1, 2, 2, version="v1", num_heads=2)
    task, queries = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 8)
    head.eval()
    a, b = head(task, queries), head(task, queries)
    assert torch.equal(a, b)
    head.train()
    c, d = head(task, queries), head(task, queries)
    assert not torch.equal(c, d)


def test_parameter_names_match_released_layout():
    pro = {n for n, _ in L1RegressionActionHead(16, 1, 2, 3, "pro", 2).named_parameters()}
    v1 = {n for n, _ in L1RegressionActionHead(16, 1, 2, 3, "v1", 2).named_parameters()}
    block = "model.mlp_resnet_blocks.0."
    assert {block + k for k in ("k_self.weight", "v_adapter.bias", "k_task.weight", "film_gen.0.weight")} <= pro
    assert {block + k for k in ("k_proj.weight", "v_proj.bias", "gating_factor", "ffn.1.weight")} <= v1
    assert {"model.layer_norm1.weight", "model.fc1.weight", "model.fc2.bias"} <= v1
