"""instruction-swap's patching: which prompt tokens of two instructions align, and that the patch copies exactly the
other run's states of those tokens at one depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import randomize

from vla_lab import VLAAdapter, capture
from vla_lab.interp.hooks import llm_hook
from vla_lab.studies.instruction_swap import (
    aligned_patch_forward,
    aligned_tokens,
    first_chunk_share,
    prompt_positions,
)
from vla_lab.worlds import Observation


def test_aligned_tokens_are_the_common_prefix_and_suffix() -> None:
    assert aligned_tokens([1, 5, 6, 7, 8, 9], [1, 5, 6, 11, 12, 8, 9]) == ([0, 1, 2, 4, 5], [0, 1, 2, 5, 6])
    assert aligned_tokens([1, 2, 3], [1, 2, 3]) == ([0, 1, 2], [0, 1, 2])
    assert aligned_tokens([1, 2, 2], [1, 2]) == ([0, 1], [0, 1])  # the suffix never overlaps the prefix
    assert aligned_tokens([1, 4], [1, 5]) == ([0], [0])
    assert first_chunk_share(np.zeros(3), np.ones(3), np.full(3, 0.25)) == pytest.approx(0.25)
    assert np.isnan(first_chunk_share(np.ones(3), np.ones(3), np.zeros(3)))


PROMPTS = {"own": [1, 5, 6, 7, 8, 9], "other": [1, 5, 6, 11, 12, 13, 8, 9]}


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_the_patch_copies_the_other_runs_states_of_the_aligned_tokens(tiny_config, attention) -> None:
    torch.manual_seed(0)
    model = randomize(VLAAdapter(tiny_config), seed=4, scale=0.3).eval()
    model.set_attention(attention)
    gen = torch.Generator().manual_seed(1)
    size = model.config.vision.image_size
    pixels = torch.randn(1, model.config.vision.channels_per_image * model.config.num_images, size, size, generator=gen)
    proprio = torch.rand(1, model.config.robot.proprio_dim, generator=gen) * 2 - 1

    def inputs_for(observations):
        ids = torch.tensor([PROMPTS[observations[0].instruction]])
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids), "proprio": proprio}

    own = [Observation([], "own", np.zeros(8))]
    depth = 2
    hook = llm_hook("resid_post", depth - 1)
    with torch.no_grad():
        plain = model(**inputs_for(own)).normalized_actions
        # Depth 0 copies the embeddings of identical tokens: nothing changes (a wrong position map would).
        same = aligned_patch_forward(model, inputs_for, "other", 0)(inputs_for(own), own, [0]).normalized_actions
        torch.testing.assert_close(same, plain, rtol=0, atol=0)
        with capture(model, "none", head=False, names=[hook]) as other_cache:
            model(**inputs_for([Observation([], "other", np.zeros(8))]))
        with capture(model, "none", head=False, names=[hook]) as own_cache:
            model(**inputs_for(own))
        patched = aligned_patch_forward(model, inputs_for, "other", depth)(inputs_for(own), own, [0]).normalized_actions
        into, take = aligned_tokens(PROMPTS["own"], PROMPTS["other"])
        rows = prompt_positions(own_cache.layouts[0], into)
        cols = prompt_positions(other_cache.layouts[0], take)
        assert rows == [0, *[own_cache.layouts[0].text.start + i - 1 for i in (1, 2, 4, 5)]]
        source, before = other_cache[hook][0], own_cache[hook][0]
        expected = before.clone()
        expected[rows] = source[cols]  # the other run's aligned states, every other position its own
        with capture(model, "none", hidden_states=False, head=False, patches={hook: expected[None]}):
            by_hand = model(**inputs_for(own)).normalized_actions
    torch.testing.assert_close(patched, by_hand, rtol=0, atol=0)
    if attention == "causal":  # the prefix (tok0 .. the first differing token) reads the same inputs in both runs
        torch.testing.assert_close(source[cols[:3]], before[rows[:3]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(patched, plain)
