"""A fast inference path with the same outputs as :meth:`VLAAdapter.forward`.

It runs the model's own stages (the assembly plan, :func:`~vla_lab.model.llm.run_decoder`, the
head's blocks and :func:`~vla_lab.model.action_head.bridge_attention`); what differs is bookkeeping:

* a *plan* per sequence layout holds everything that depends only on the layout and the model's
  settings (prompt lengths, mask, kernel, hidden offset, dtype, device): the
  :class:`~vla_lab.model.sequence.AssemblyPlan`, the kernel-ready mask and the LLM's RoPE tables.
  Plans are cached, so the hot path does no host synchronisation and no mask work;
* the LLM keeps, of each hidden state, only the positions the head reads;
* the action head computes the key/value projections of the adapter and task inputs for *all*
  blocks in one batched matmul (they depend only on the LLM states) and runs each block's attention
  with SDPA (``kernel="sdpa"``);
* on CUDA, each plan's forward is captured once as a CUDA graph and replayed; a layout that has no
  graph yet runs the eager fast path (the transparent fallback) and gets one captured.

The head weights are stacked when the ``FastVLA`` is built; call :meth:`FastVLA.refresh` after
changing the model's weights.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from vla_lab.config import AttentionLike, AttentionSpec
from vla_lab.errors import InputError
from vla_lab.model.action_head import L1RegressionActionHead, apply_rope, bridge_attention, rope_tables
from vla_lab.model.inputs import check_actions, forward_inputs
from vla_lab.model.llm import rotary_embeddings, run_decoder
from vla_lab.model.sequence import AssemblyPlan, mask_for_kernel, stack_head_inputs
from vla_lab.model.vla import ActionPrediction, VLAAdapter


class FastHead:
    """The bridge-attention head with its adapter/task projections batched over blocks."""

    def __init__(self, head: L1RegressionActionHead) -> None:
        self.head = head
        self.refresh()

    def refresh(self) -> None:
        blocks = self.head.model.blocks

        def stack(source: str, which: int) -> tuple[torch.Tensor, torch.Tensor]:
            linears = [block.projections(source)[which] for block in blocks]
            weights = torch.stack([linear.weight for linear in linears]).detach()
            biases = torch.stack([linear.bias for linear in linears]).detach()
            return weights.transpose(1, 2).contiguous(), biases[:, None]

        self.weights = {(source, which): stack(source, which) for source in ("adapter", "task") for which in (0, 1)}
        self.gates = torch.stack([block.gate() for block in blocks]).detach().reshape(-1)

    def _project(self, states: torch.Tensor, source: str, which: int) -> torch.Tensor:
        """(B, L, n, C) states of every block -> (L, B, H, n, d) projections, one batched matmul."""
        blocks = self.head.model.blocks
        batch, layers, n, width = states.shape
        weight, bias = self.weights[(source, which)]
        flat = states.transpose(0, 1).reshape(layers, batch * n, width)
        out = torch.baddbmm(bias, flat, weight).reshape(layers, batch, n, blocks[0].num_heads, blocks[0].head_dim)
        out = out.permute(0, 1, 3, 2, 4)
        rope = blocks[0].rope
        if which == 0 and rope is not None:
            out = apply_rope(out, *rope_tables(n, rope.inv_freq, states.dtype))
        return out

    def __call__(
        self, task_states: torch.Tensor, query_states: torch.Tensor, proprio_features: torch.Tensor | None
    ) -> torch.Tensor:
        """task (B, L, K_t, C) and queries (B, L, Q, C) of hidden_index 1..L -> (B, chunk, dim)."""
        head, model = self.head, self.head.model
        adapter = query_states
        if proprio_features is not None:
            layers = query_states.shape[1]
            adapter = torch.cat([adapter, proprio_features[:, None, None].expand(-1, layers, -1, -1)], dim=2)
        ka, va = self._project(adapter, "adapter", 0), self._project(adapter, "adapter", 1)
        kt, vt = self._project(task_states, "task", 0), self._project(task_states, "task", 1)
        x = model.embed(head.latent(task_states.shape[0], task_states))
        for b, block in enumerate(model.blocks):
            ks, vs = block.keys_values("self", x, x.dtype)
            out, _ = bridge_attention(block.query(x), [ks, ka[b], kt[b]], [vs, va[b], vt[b]], self.gates[b],
                                      kernel="sdpa")
            x = block.finish(out, x)
        return model.readout(x)


@dataclass
class Plan:
    """Everything that depends only on the sequence layout and the model's settings, computed once."""

    key: Hashable
    assembly: AssemblyPlan
    spec: AttentionSpec
    mask: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    graph: Any = None
    static: dict[str, Any] = field(default_factory=dict)
    calls: int = 0

    @property
    def layouts(self) -> list[Any]:
        return list(self.assembly.layouts)


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
        self.plans: OrderedDict[Hashable, Plan] = OrderedDict()
        self.stats = {"plans_built": 0, "graph_captures": 0, "graph_replays": 0, "eager_runs": 0}
        self.head = FastHead(model.action_head)

    def refresh(self) -> None:
        """Re-read the head weights and drop cached plans and graphs (after changing weights)."""
        self.head.refresh()
        self.plans.clear()

    # --- plans ---------------------------------------------------------------------------------
    def plan(self, lengths: tuple[int, ...], max_len: int, spec: AttentionSpec, proprio: bool = True) -> Plan:
        """The cached plan of a layout; the key holds every setting the plan (and its graph) depends on,
        ``proprio`` (whether the batch has proprio) included."""
        model, config = self.model, self.model.config
        kernel, offset = config.attn_kernel, config.hidden_offset
        key = (lengths, max_len, json.dumps(spec.to_config(), sort_keys=True), kernel, offset, str(model.dtype),
               str(model.device), bool(proprio))
        if key in self.plans:
            self.plans.move_to_end(key)
            return self.plans[key]
        assembly = model.plan(lengths, max_len)
        probe = torch.zeros(1, assembly.length, config.llm_dim, device=model.device, dtype=model.dtype)
        plan = Plan(key, assembly, spec, mask_for_kernel(assembly.allowed(spec), kernel, model.dtype),
                    rotary_embeddings(model.language_model, probe))
        self.plans[key] = plan
        self.stats["plans_built"] += 1
        while len(self.plans) > self.max_plans:
            self.plans.popitem(last=False)
        return plan

    def plan_for(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, attention: Any,
                 proprio: bool | None = None) -> Plan:
        """The plan of a batch: prompt lengths read from the (CPU) mask, the mask spec parsed; ``proprio``
        defaults to whether the model takes proprio."""
        if attention_mask is None:
            lengths = (input_ids.shape[1],) * input_ids.shape[0]
        else:
            lengths = tuple(int(n) for n in attention_mask.detach().cpu().sum(dim=1))
        spec = self.model.config.attention_spec(attention)
        has_proprio = self.model.proprio_projector is not None if proprio is None else proprio
        return self.plan(lengths, input_ids.shape[1], spec, has_proprio)

    def _check_proprio(self, proprio: Any, batch: int) -> torch.Tensor | None:
        """``proprio`` as :meth:`VLAAdapter.forward` takes it, with its one-line errors (missing, unexpected,
        mis-shaped); a (B, proprio_dim) tensor passes without the finiteness check, which would synchronise."""
        model = self.model
        shape = (batch, model.config.robot.proprio_dim)
        if isinstance(proprio, torch.Tensor) and tuple(proprio.shape) == shape and model.proprio_projector is not None:
            return proprio
        return model.check_proprio(proprio, batch)

    # --- the computation -------------------------------------------------------------------
    def _compute(
        self, plan: Plan, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None
    ) -> torch.Tensor:
        model, assembly = self.model, plan.assembly
        hidden = model.embed_sequence(assembly, input_ids, model.embed_images(pixel_values))
        kept = run_decoder(model.language_model, hidden, plan.mask, position_embeddings=plan.position_embeddings,
                           keep=assembly.head_positions)
        task, queries = stack_head_inputs(kept[1:])  # the head never reads hidden_index 0
        queries, proprio_features = model.head_conditioning(queries, proprio)
        return self.head(task, queries, proprio_features)

    def _graph(
        self, plan: Plan, pixel_values: torch.Tensor, input_ids: torch.Tensor, proprio: torch.Tensor | None
    ) -> None:
        static: dict[str, Any] = {"pixel_values": pixel_values.clone(), "input_ids": input_ids.clone(),
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
        attention: AttentionLike | None = None,
    ) -> torch.Tensor:
        """Normalised actions (B, chunk, dim), equal to ``model(...).normalized_actions``.

        ``attention_mask`` should live on the CPU (it decides the plan; reading it from the GPU
        would synchronise). Inside :func:`vla_lab.capture` the call runs (and is recorded as) the model's
        own forward, never a graph. Non-finite actions are refused in one line on the CPU; on a GPU this call
        leaves them to :meth:`predict_action` (checking here would synchronise the stream every call).
        """
        model = self.model
        proprio = self._check_proprio(proprio, input_ids.shape[0])
        plan = self.plan_for(input_ids, attention_mask, attention, proprio is not None)
        device, dtype = model.device, model.dtype
        pixel_values = pixel_values.to(device, dtype, non_blocking=True)
        input_ids = input_ids.to(device, non_blocking=True)
        proprio = proprio.to(device, dtype, non_blocking=True) if proprio is not None else None
        if model._recorder is not None:  # a capture records the model's own forward: the same computation
            recorded = model(pixel_values, input_ids, attention_mask, proprio, plan.spec)
            actions: torch.Tensor = recorded.normalized_actions
            return actions
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
                out: torch.Tensor = plan.static["out"].clone()
                return out
        self.stats["eager_runs"] += 1
        computed = self._compute(plan, pixel_values, input_ids, proprio)
        return check_actions(computed) if computed.device.type == "cpu" else computed

    def predict_action(self, images: Any = None, instruction: Any = None, proprio: Any = None, *,
                       unnorm_key: str | None = None, attention: AttentionLike | None = None,
                       **inputs: Any) -> ActionPrediction:
        """As :meth:`VLAAdapter.predict_action`, on the fast path."""
        model = self.model
        batch = model.prepare_inputs(images, instruction, proprio, unnorm_key=unnorm_key, **inputs)
        forward = forward_inputs(batch)
        mask = forward["attention_mask"].cpu()
        normalized = self(forward["pixel_values"], forward["input_ids"], mask, forward["proprio"], attention)
        plan = self.plan_for(forward["input_ids"], mask, attention, forward["proprio"] is not None)
        return model.prediction(normalized, batch, plan.layouts, plan.spec.label)


__all__ = ["FastHead", "FastVLA", "Plan"]
