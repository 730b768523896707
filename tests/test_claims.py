import torch

from vla_lab import VLAConfig, random_model
from vla_lab.studies.claims import _matching_positions, check_seed_note_claims
from vla_lab.tabletop import example_inputs


def test_seed_note_claims_are_measured():
    df = check_seed_note_claims()
    verdicts = dict(zip(df["claim"], df["verdict"]))
    assert verdicts == {
        "LLM attention": "wrong",
        "backbone order": "wrong",
        "patch tokens and widths": "wrong",
        "fused projector width": "holds",
        "action output": "wrong",
        "head inputs": "wrong",
    }
    measured = dict(zip(df["claim"], df["measured"]))
    assert "256 tokens per image" in measured["patch tokens and widths"]
    assert "aloha: (25, 14)" in measured["action output"]


def test_head_input_positions_follow_the_offset():
    for offset, shift in (("released", 1), ("aligned", 0)):
        model = random_model(VLAConfig.preset("tiny").replace(hidden_offset=offset)).eval()
        forward, _, _ = example_inputs(model)
        with torch.no_grad():
            out = model(**forward)
        layout = out.layouts[0]
        task = _matching_positions(out.hidden_states, out.task_states)
        queries = _matching_positions(out.hidden_states, out.query_states)
        assert task == list(range(layout.vision[0].start - shift, layout.vision[-1].stop - shift))
        assert queries == list(range(layout.action_queries.start - shift, layout.action_queries.stop - shift))
