"""``vla-lab predict``: an action chunk for images and an instruction, with the inputs the model was given."""

from __future__ import annotations

import argparse

import numpy as np

from vla_lab.cli import options


def register(sub: options.Subparsers) -> None:
    """Add ``predict`` to the subparsers of the ``vla-lab`` parser."""
    p = sub.add_parser("predict", help="predict an action chunk for images + instruction")
    options.add_model_arguments(p)
    options.add_observation(p, required=True)
    options.add_json(p, "print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab predict``."""
    proprio = options.parse_proprio(args.proprio)
    images = options.read_images(args.image)
    model = options.load_model(args)
    proprio, normalized = options.proprio_for(model, proprio)
    pred = model.predict_action(
        images, args.instruction, proprio, unnorm_key=args.unnorm_key, proprio_is_normalized=normalized,
        center_crop=args.center_crop,
    )
    actions = pred.actions if pred.actions is not None else pred.normalized_actions  # finite: predict_action checks
    result = {
        "actions": np.asarray(actions)[0].tolist(),
        "normalized_actions": pred.normalized_actions[0].tolist(),
        "unnormalized": pred.actions is not None,
        "unnorm_key": pred.unnorm_key,
        "prompt": pred.prompt,
        "prompt_text": pred.prompts[0] if pred.prompts else None,
        "input_ids": pred.input_ids[0],
        "num_patches": pred.layout.num_patches,
        "sequence_length": pred.layout.num_tokens,
        "segments": pred.layout.to_dict(),
        "attention": pred.attention,
        "model": options.model_source(args),
        "dtype": args.dtype,
        "device": args.device,
    }
    if args.json:
        options.print_json(result)
        return 0
    print(f"prompt ({result['prompt']}): {result['prompt_text']!r}  ({len(result['input_ids'])} tokens)")
    print(f"sequence: {result['sequence_length']} tokens, {result['num_patches']} patches, attention {pred.attention}")
    print(("actions" if pred.actions is not None else "normalized actions (no dataset statistics)") + ":")
    for row in result["actions"]:
        print("  " + " ".join(f"{v:+.4f}" for v in row))
    return 0
