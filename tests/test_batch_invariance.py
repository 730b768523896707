"""A sample's actions do not depend on what else is in its batch under ``set_batch_invariant``: what lets
``eval libero --envs-per-process N`` give the records of one environment at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_lab.libero.models import MASKS, load_shipped

pytestmark = pytest.mark.usefixtures("one_thread")
# Prompts of different lengths (the shorter ones are padded in a batch), as LIBERO's tasks give them.
INSTRUCTIONS = ("pick up the black bowl between the plate and the ramekin and place it on the plate",
                "pick up the black bowl on the ramekin and place it on the plate",
                "pick up the black bowl next to the cookie box and place it on the plate",
                "pick up the black bowl on the wooden cabinet and place it on the plate")


def observations(seed: int = 0) -> tuple[list[list[np.ndarray]], np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [[rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)] for _ in INSTRUCTIONS]
    return images, rng.normal(0.0, 0.3, (len(INSTRUCTIONS), 8)).astype(np.float32)


@pytest.mark.parametrize("mask", MASKS)
def test_a_batched_query_gives_each_sample_its_actions_alone(mask):
    model = load_shipped(mask).eval()
    key = next(iter(model.config.norm_stats))
    images, proprio = observations()

    def predict(rows):
        out = model.predict_action([images[r] for r in rows], [INSTRUCTIONS[r] for r in rows], proprio[list(rows)],
                                   unnorm_key=key, center_crop=True)
        return out.normalized_actions

    alone = [predict([r])[0] for r in range(len(INSTRUCTIONS))]
    model.set_batch_invariant(True)
    for rows in ([0, 1, 2, 3], [3, 1], [2, 0, 1]):
        batched = predict(rows)
        for k, r in enumerate(rows):
            assert np.array_equal(batched[k], alone[r]), (rows, r, float(np.abs(batched[k] - alone[r]).max()))


def test_training_and_captures_keep_whole_batches():
    """The training noise is drawn once per batch, and recorders see one call: neither is split by the switch."""
    model = load_shipped("causal")
    model.set_batch_invariant(True)
    calls = []
    model.action_head.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images, proprio = observations(1)
    inputs = model.prepare_inputs(images, list(INSTRUCTIONS), proprio, unnorm_key=next(iter(model.config.norm_stats)),
                                  center_crop=True)
    from vla_lab.model import forward_inputs

    with torch.no_grad():
        model.train()
        model(**forward_inputs(inputs))
        model.eval()
        model(**forward_inputs(inputs))
    assert calls == [4, 1, 1, 1, 1]
