"""A fast inference path with the same outputs as :meth:`VLAAdapter.forward`.

What it does differently (the mathematics is unchanged):

* a *plan* per sequence layout (batch size, prompt lengths, mask) holds everything that depends
  only on the layout: the assembly gather index, the kernel-ready mask, RoPE tables and the head's
  read positions. Plans are cached, so the hot path does no host synchronisation and no mask work;
* the LLM runs layer by layer keeping only the positions the head reads;
* the action head computes the key/value projections of the adapter and task groups for *all*
  blocks in one batched matmul (they depend only on the LLM states), folds the gate into the task
  keys and runs each block's attention with SDPA;
* on CUDA, each plan's forward is captured once as a CUDA graph and replayed; a layout that has no
  graph yet runs the eager fast path (the transparent fallback) and gets one captured.

The head weights are stacked when the ``FastVLA`` is built; call :meth:`FastVLA.refresh` after
changing the model's weights.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vla_lab.action_head import L1RegressionActionHead, UpstreamRoPE, rotate_interleaved
from vla_lab.errors import InputError
from vla_lab.llm import mask_for_kernel
from vla_lab.model import ActionPrediction, VLAAdapter
from vla_lab.sequence import AttentionSpec, SequenceLayout, allowed_matrix, segment_id_matrix


def _rope_tables(length: int, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's Pro-head tables (see :class:`vla_lab.action_head.UpstreamRoPE`)."""
    t = torch.arange(length, device=inv_freq.device, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    table = torch.cat([freqs, freqs], dim=-1)
    return table.cos().to(dtype), table.sin().to(dtype)


class FastHead:
    """The bridge-attention head with its adapter/task projections batched over blocks."""

    def __init__(self, head: L1RegressionActionHead) -> None:
        self.head = head
        self.refresh()

    def refresh(self) -> None:
        blocks = list(self.head.model.mlp_resnet_blocks)
        self.pro = self.head.version == "pro"

        def stack(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            weights = torch.stack([getattr(b, name).weight for b in blocks]).detach()
            biases = torch.stack([getattr(b, name).bias for b in blocks]).detach()
            return weights.transpose(1, 2).contiguous(), biases[:, None]

        if self.pro:
            self.k_adapter, self.v_adapter = stack("k_adapter"), stack("v_adapter")
            self.k_task, self.v_task = stack("k_task"), stack("v_task")
        else:
            self.k_adapter = self.k_task = stack("k_proj")
            self.v_adapter = self.v_task = stack("v_proj")
        self.gates = torch.tanh(torch.stack([b.gating_factor for b in blocks]).detach()).reshape(-1)

    @staticmethod
    def _project(states: torch.Tensor, weight_bias: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(L, N, C) states of every block -> (L, N, C) projections, one batched matmul."""
        weight, bias = weight_bias
        return torch.baddbmm(bias, states, weight)

    def __call__(
        self, task_states: torch.Tensor, query_states: torch.Tensor, proprio_features: torch.Tensor | None
    ) -> torch.Tensor:
        """task (B, L, K_t, C) and queries (B, L, Q, C) of layers 1..L -> (B, chunk, dim)."""
        head = self.head
        model = head.model
        blocks = list(model.mlp_resnet_blocks)
        batch, layers, k_task, width = task_states.shape
        adapter = query_states
        if proprio_features is not None:
            adapter = torch.cat([adapter, proprio_features[:, None, None].expand(-1, layers, -1, -1)], dim=2)
        k_adapter = adapter.shape[2]
        heads, head_dim = blocks[0].num_heads, blocks[0].head_dim

        def per_block(states: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            n = states.shape[2]
            flat = states.transpose(0, 1).reshape(layers, batch * n, width)
            out = self._project(flat, wb).reshape(layers, batch, n, heads, head_dim)
            return out.permute(0, 1, 3, 2, 4)  # (L, B, H, n, d)

        ka, va = per_block(adapter, self.k_adapter), per_block(adapter, self.v_adapter)
        kt, vt = per_block(task_states, self.k_task), per_block(task_states, self.v_task)
        dtype = task_states.dtype
        if self.pro:
            inv_freq = blocks[0].rope.inv_freq
            cos_a, sin_a = _rope_tables(k_adapter, inv_freq, dtype)
            cos_t, sin_t = _rope_tables(k_task, inv_freq, dtype)
            ka = ka * cos_a + rotate_interleaved(ka) * sin_a
            kt = kt * cos_t + rotate_interleaved(kt) * sin_t
            cos_x, sin_x = _rope_tables(head.chunk, inv_freq, dtype)
        kt = kt * self.gates.to(dtype)[:, None, None, None, None]

        latent = torch.zeros(batch, head.chunk, head.action_dim * width, device=task_states.device, dtype=dtype)
        x = model.relu(model.fc1(model.layer_norm1(latent)))
        for i, block in enumerate(blocks):
            q = block._heads(block.q_proj(x))
            if self.pro:
                k_self, v_self = block._heads(block.k_self(x)), block._heads(block.v_self(x))
                q = q * cos_x + rotate_interleaved(q) * sin_x
                k_self = k_self * cos_x + rotate_interleaved(k_self) * sin_x
            else:
                k_self, v_self = block._heads(block.k_proj(x)), block._heads(block.v_proj(x))
            keys = torch.cat([k_self, ka[i], kt[i]], dim=2)
            values = torch.cat([v_self, va[i], vt[i]], dim=2)
            out = F.scaled_dot_product_attention(q, keys, values)
            out = block.o_proj(out.transpose(1, 2).reshape(batch, head.chunk, width))
            x = block.ffn(out + x)
        return model.fc2(model.layer_norm2(x))


@dataclass
class Plan:
    """Everything that depends only on the sequence layout, computed once per layout."""

    key: tuple
    layouts: list[SequenceLayout]
    order: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    task_slice: slice
    query_index: torch.Tensor
    spec: AttentionSpec = field(default_factory=AttentionSpec)
    allowed: torch.Tensor | None = None
    graph: Any = None
    static: dict[str, Any] = field(default_factory=dict)
    calls: int = 0


class FastVLA:
    """Fast, same-output inference for a :class:`VLAAdapter` (see the module docstring).

    ``cuda_graphs`` defaults to True on CUDA; ``max_plans`` bounds how many layouts stay cached.
    """

    def __init__(self, model: VLAAdapter, cuda_graphs: bool | None = None, max_plans: int = 8) -> None:
        self.model = model.eval()
        self.cuda_graphs = (model.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and model.device.type != "cuda":
            raise InputError("cuda_graphs: got True, expected a model on a CUDA device")
        self.max_plans = max_plans
        self.plans: OrderedDict[tuple, Plan] = OrderedDict()
        self.stats = {"plans_built": 0, "graph_captures": 0, "graph_replays": 0, "eager_runs": 0}
        self.head = FastHead(model.action_head)

    def refresh(self) -> None:
        """Re-read the head weights and drop cached plans and graphs (after changing weights)."""
        self.head.refresh()
        self.plans.clear()

    # --- plans ---------------------------------------------------------------------------------
    def plan(self, lengths: tuple[int, ...], max_len: int, spec: AttentionSpec) -> Plan:
        model, config = self.model, self.model.config
        key = (lengths, max_len, json.dumps(spec.to_config(), sort_keys=True), str(model.dtype))
        if key in self.plans:
            self.plans.move_to_end(key)
            return self.plans[key]
        device, dtype = model.device, model.dtype
        num_patches, num_queries = model.vision_backbone.num_patches, config.num_action_queries
        seq = num_patches + max_len + num_queries + 1
        pos = torch.arange(seq)[None]
        lengths_t = torch.tensor(lengths)[:, None]
        is_pad = (pos >= num_patches + lengths_t) & (pos < num_patches + max_len)
        order = torch.argsort(torch.where(is_pad, pos + seq, pos), dim=1, stable=True)
        grid = model.vision_backbone.patch_grid
        per_image = [model.vision_backbone.patches_per_image] * config.num_images
        layouts = [
            SequenceLayout.build(n, per_image, [grid] * config.num_images, num_queries, seq) for n in lengths
        ]
        allowed = allowed_matrix(spec, segment_id_matrix(layouts)).to(device)
        mask = mask_for_kernel(allowed, config.attn_kernel, dtype)
        spans = [lay.head_input_positions(config.hidden_offset) for lay in layouts]
        starts = torch.tensor([q.start for _, q in spans])
        query_index = (starts[:, None] + torch.arange(num_queries)[None]).to(device)
        position_ids = torch.arange(seq, device=device)[None]
        probe = torch.zeros(1, seq, config.llm_dim, device=device, dtype=dtype)
        position_embeddings = model.language_model.model.rotary_emb(probe, position_ids)
        plan = Plan(key, layouts, order.to(device), mask, position_ids, position_embeddings, spans[0][0].slice,
                    query_index, spec, allowed)
        self.plans[key] = plan
        self.stats["plans_built"] += 1
        while len(self.plans) > self.max_plans:
            self.plans.popitem(last=False)
        return plan

    def plan_for(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, attention: Any) -> Plan:
        """The plan of a batch: prompt lengths read from the (CPU) mask, the mask spec parsed."""
        if attention_mask is None:
            lengths = (input_ids.shape[1],) * input_ids.shape[0]
        else:
            lengths = tuple(int(n) for n in attention_mask.detach().cpu().sum(dim=1))
        spec = AttentionSpec.parse(attention) if attention is not None else self.model.attention
        return self.plan(lengths, input_ids.shape[1], spec)

    # --- the computation -------------------------------------------------------------------
    def _compute(
        self, plan: Plan, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None,
        recorder: Any = None,
    ) -> torch.Tensor:
        model = self.model
        llm = model.language_model.model
        patches = model.projector(model.vision_backbone(pixel_values))
        text = llm.embed_tokens(input_ids)
        batch = input_ids.shape[0]
        queries = model.action_queries.weight[None].expand(batch, -1, -1)
        stop = llm.embed_tokens.weight[model.config.stop_token_id][None, None].expand(batch, 1, -1)
        raw = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:], queries, stop], dim=1)
        hidden = raw.gather(1, plan.order[..., None].expand(-1, -1, raw.shape[2]))
        kwargs: dict[str, Any] = {}
        if recorder is not None:
            hidden = recorder.begin(plan.layouts, plan.spec, plan.allowed, hidden)
            kwargs["vla_lab_recorder"] = recorder
        index = plan.query_index[..., None].expand(-1, -1, hidden.shape[2])
        tasks, query_states = [], []
        for i, layer in enumerate(llm.layers):
            hidden = layer(hidden, attention_mask=plan.mask, position_embeddings=plan.position_embeddings,
                           position_ids=plan.position_ids, **kwargs)
            if recorder is not None:
                hidden = recorder.layer(i, hidden)
            state = llm.norm(hidden) if i == len(llm.layers) - 1 else hidden
            tasks.append(state[:, plan.task_slice])
            query_states.append(state.gather(1, index))
        task = torch.stack(tasks, dim=1)
        qs = torch.stack(query_states, dim=1)
        if model.config.upstream_bf16_casts:
            qs = qs.to(torch.bfloat16).to(qs.dtype)
            proprio = proprio.to(torch.bfloat16).to(proprio.dtype) if proprio is not None else None
        proprio_features = model.proprio_projector(proprio) if proprio is not None else None
        if recorder is None:
            return self.head(task, qs, proprio_features)
        # Under capture the plain head runs (it reports each block's attention); it reads layers 1..L.
        actions = model.action_head(
            torch.cat([torch.zeros_like(task[:, :1]), task], 1),
            torch.cat([torch.zeros_like(qs[:, :1]), qs], 1),
            proprio_features,
        )
        recorder.end(llm.norm(hidden), task, qs, actions)
        return actions

    def _graph(self, plan: Plan, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None):
        static = {"pixel_values": pixel_values.clone(), "input_ids": input_ids.clone(),
                  "proprio": proprio.clone() if proprio is not None else None}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._compute(plan, static["pixel_values"], static["input_ids"], static["proprio"])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static["out"] = self._compute(plan, static["pixel_values"], static["input_ids"], static["proprio"])
        plan.graph, plan.static = graph, static
        self.stats["graph_captures"] += 1

    @torch.inference_mode()
    def __call__(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        attention: Any = None,
    ) -> torch.Tensor:
        """Normalised actions (B, chunk, dim), equal to ``model(...).normalized_actions``.

        ``attention_mask`` should live on the CPU (it decides the plan; reading it from the GPU
        would synchronise).
        """
        model = self.model
        plan = self.plan_for(input_ids, attention_mask, attention)
        device, dtype = model.device, model.dtype
        pixel_values = pixel_values.to(device, dtype, non_blocking=True)
        input_ids = input_ids.to(device, non_blocking=True)
        proprio = proprio.to(device, dtype, non_blocking=True) if proprio is not None else None
        plan.calls += 1
        if self.cuda_graphs:
            if plan.graph is None and plan.calls >= 2:
                self._graph(plan, pixel_values, input_ids, proprio)
            if plan.graph is not None:
                plan.static["pixel_values"].copy_(pixel_values)
                plan.static["input_ids"].copy_(input_ids)
                if proprio is not None:
                    plan.static["proprio"].copy_(proprio)
                plan.graph.replay()
                self.stats["graph_replays"] += 1
                return plan.static["out"].clone()
        self.stats["eager_runs"] += 1
        return self._compute(plan, pixel_values, input_ids, proprio)

    def capture_forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        attention: Any = None,
        mode: str = "segments",
        **capture_options: Any,
    ) -> tuple[torch.Tensor, Any]:
        """The fast path under :func:`vla_lab.capture.capture` (eager, never a graph): (actions, cache)."""
        from vla_lab.capture import capture

        model = self.model
        plan = self.plan_for(input_ids, attention_mask, attention)
        device, dtype = model.device, model.dtype
        with capture(model, mode, **capture_options) as cache, torch.inference_mode():
            actions = self._compute(
                plan,
                pixel_values.to(device, dtype),
                input_ids.to(device),
                proprio.to(device, dtype) if proprio is not None else None,
                recorder=model._recorder,
            )
        return actions, cache

    def predict_action(self, images: Any = None, instruction: Any = None, proprio: Any = None, *,
                       unnorm_key: str | None = None, attention: Any = None, **inputs: Any) -> ActionPrediction:
        """As :meth:`VLAAdapter.predict_action`, on the fast path."""
        model = self.model
        batch = model.prepare_inputs(images, instruction, proprio, unnorm_key=unnorm_key, **inputs)
        prompts, stats_key = batch.pop("prompts"), batch.pop("unnorm_key")
        mask = batch["attention_mask"].cpu()
        normalized = self(batch["pixel_values"], batch["input_ids"], mask, batch["proprio"], attention)
        normalized = normalized.float().cpu().numpy()
        plan = self.plan_for(batch["input_ids"], mask, attention)
        ids = [row[: int(n)] for row, n in zip(batch["input_ids"].tolist(), mask.sum(1).tolist())]
        return ActionPrediction(normalized, model.unnormalize(normalized, stats_key), plan.layouts, stats_key,
                                plan.spec.label, ids, prompts)


__all__ = ["FastHead", "FastVLA", "Plan", "UpstreamRoPE"]
