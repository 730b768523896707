"""The options more than one command module takes, each defined once, and the helpers their handlers share.

Every option here is added to a parser by exactly one function, ``add_<option>``; a command passes the default
or the help wording its role needs, never adds the flag itself (``tests/test_cli_package.py`` checks that no
flag is added in two places). The command modules import this module and nothing else of :mod:`vla_lab.cli`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TypeAlias

import numpy as np

from vla_lab import files
from vla_lab.config import PRESETS, PROMPTS, resolve_device
from vla_lab.errors import InputError, check_seed
from vla_lab.model import VLAAdapter, default_dtype
from vla_lab.processing.normalization import finite_numbers

#: What a command module's ``register`` is given: the subparsers of the ``vla-lab`` parser.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: The LLM masks a model can be built or run with.
MASK_CHOICES = ("causal", "bidirectional")


def speaks() -> bool:
    """Whether this process reports what every rank meets alike (an interrupt, a refused input): a single process,
    or rank 0 of a torchrun run; the other ranks exit with the same status, silently."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``vla-lab <command>: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n" if speaks() else None)


# ---------------------------------------------------------------------------------------------
# The model: where it comes from and how it runs
# ---------------------------------------------------------------------------------------------

#: ``--prompt``'s help where one model is run: what each choice is and the default.
PROMPT_HELP = ("the prompt the instruction is put in: qwen-chat (Qwen's chat template, as upstream runs released "
               "checkpoints) or openvla (In: ... Out:); default: the model's own (qwen-chat for a released "
               "checkpoint, openvla for vla-lab's trained models)")
#: ``--model``'s help where one model is run.
MODEL_HELP = ("a model of the registry by name (a preset with random weights, a shipped model such as tabletop-causal "
              "or libero-spatial-causal, random-init:<shipped name>; vla_lab.registry.list_models()) or a "
              "checkpoint directory")
#: ``--prompt``'s help where several models are run.
EACH_MODEL_PROMPT_HELP = "the prompt every model's instructions are put in (default: each model's own)"
#: What ``--dtype`` defaults to where it follows the model (:func:`vla_lab.model.default_dtype`).
DTYPE_HELP = ("bfloat16 for a released checkpoint, as upstream runs it; the dtype of its weights for a vla-lab "
              "checkpoint; float32 for a preset")


def add_model_arguments(
    parser: argparse.ArgumentParser,
    attention: tuple[str, ...] | None = MASK_CHOICES,
    attention_default: str | None = None,
    prompt: bool = True,
    dtype_default: str | None = "float32",
) -> None:
    """``--model NAME_OR_DIR`` (:func:`vla_lab.registry.create`: a preset with random weights from ``--seed``, a
    shipped model, ``random-init:NAME``, a checkpoint directory), ``--dtype`` (``dtype_default``; None: the
    model's own, :data:`DTYPE_HELP`), ``--device``, ``--prompt`` (when ``prompt``: commands that build inputs from
    an instruction) and, unless ``attention`` is None, ``--attention`` with those choices."""
    add_models(parser, "model", MODEL_HELP, required=True, repeat=False)
    if attention is not None:
        add_attention(parser, attention, attention_default)
    if prompt:
        add_prompt(parser)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=dtype_default,
                        help=f"weights and activations (default: {dtype_default or DTYPE_HELP})")
    add_device(parser)
    add_seed(parser, 0, "seed of a preset's random weights")


def add_preset(target: Any, required: bool = False, help: str = "a preset with random weights") -> None:
    """``--preset NAME``, one of :data:`vla_lab.config.PRESETS` (``target``: a parser or an exclusive group)."""
    target.add_argument("--preset", required=required, choices=sorted(PRESETS), help=help)


def add_attention(parser: argparse.ArgumentParser, choices: tuple[str, ...], default: str | None = None,
                  default_text: str | None = None) -> None:
    """``--attention MASK``, the LLM mask (``default_text``: what the help says a None default means)."""
    shown = default or default_text or "the model's"
    parser.add_argument("--attention", choices=choices, default=default, help=f"LLM mask (default: {shown})")


def add_prompt(parser: argparse.ArgumentParser, help: str = PROMPT_HELP) -> None:
    """``--prompt qwen-chat|openvla`` (default None: the model's own)."""
    parser.add_argument("--prompt", choices=PROMPTS, default=None, help=help)


def add_device(parser: argparse.ArgumentParser, default: str | None = "cpu", help: str = "cpu or cuda") -> None:
    """``--device``: cpu, cuda or cuda:N (checked when the command runs)."""
    parser.add_argument("--device", default=default, help=help)


def add_seed(parser: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--seed N`` (``help``: what the seed seeds in this command)."""
    parser.add_argument("--seed", type=seed, default=default, help=help)


def add_max_steps(parser: argparse.ArgumentParser, help: str) -> None:
    """``--max-steps N``: steps per closed-loop episode (default: the world's own limit)."""
    parser.add_argument("--max-steps", dest="max_steps", type=int, help=help)


def add_num_threads(parser: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--num-threads N``: torch CPU threads (per process under torchrun)."""
    parser.add_argument("--num-threads", dest="num_threads", type=int, default=default, help=help)


def add_models(target: Any, dest: str, help: str, required: bool = False, repeat: bool = True) -> None:
    """``--model NAME_OR_DIR`` (:mod:`vla_lab.registry` names or a directory); ``repeat``: the models a command
    compares, else the one it runs (``target``: a parser or an exclusive group)."""
    target.add_argument("--model", dest=dest, action="append" if repeat else "store", required=required, help=help)


def add_observation(parser: argparse.ArgumentParser, required: bool) -> None:
    """One observation from files: ``--image`` (repeatable), ``--instruction``, ``--proprio``, ``--unnorm-key``,
    ``--center-crop``; unless ``required``, the command has a built-in example used without them."""
    example = "" if required else "; default: the built-in tabletop example"
    parser.add_argument("--image", action="append", required=required,
                        help=f"image file (repeat: third-person, wrist, ...){example}")
    parser.add_argument("--instruction", required=required,
                        help="the task instruction" + ("" if required else " (with --image)"))
    parser.add_argument("--proprio", help="raw robot state, comma-separated (default: zeros, normalised)")
    parser.add_argument("--unnorm-key", dest="unnorm_key",
                        help="dataset statistics to use (a key of the checkpoint's norm_stats)")
    parser.add_argument("--center-crop", dest="center_crop", action="store_true",
                        help="LIBERO centre crop (0.9 area)")


# ---------------------------------------------------------------------------------------------
# Outputs and runs
# ---------------------------------------------------------------------------------------------


def add_suite(parser: argparse.ArgumentParser, help: str, default: str | None = None, *,
              optional: bool = False) -> None:
    """``--suite``: a LIBERO suite, required where it has no default unless ``optional``."""
    parser.add_argument("--suite", required=default is None and not optional, default=default, help=help)


def add_tasks(parser: argparse.ArgumentParser) -> None:
    """``--tasks``: comma-separated task ids of the suite (checked by :func:`parse_tasks`)."""
    parser.add_argument("--tasks", help="comma-separated task ids (default: every task of the suite)")


def add_init_states(parser: argparse.ArgumentParser, help: str) -> None:
    """``--init-states A:B`` (checked by :func:`parse_init_states`)."""
    parser.add_argument("--init-states", dest="init_states", help=help)


def _out_path(value: str) -> str:
    if not value.strip():  # '' would be the current directory
        raise argparse.ArgumentTypeError(f"got {value!r}, expected a path")
    return value


def add_out(parser: argparse.ArgumentParser, help: str, required: bool = False, default: str | None = None) -> None:
    """``--out PATH``: where the command writes (``help``: what it writes there); never empty."""
    parser.add_argument("--out", required=required, default=default, type=_out_path, help=help)


def seed(value: str) -> int:
    """An argparse type: a seed NumPy and the simulators take, 0 <= seed < 2**32."""
    try:
        return check_seed(int(value))
    except ValueError as exc:  # int() of a non-number, or InputError (a ValueError) out of range
        shown = value if isinstance(exc, InputError) else repr(value)
        raise argparse.ArgumentTypeError(f"got {shown}, expected an integer in [0, 2**32)") from None


def add_overwrite(parser: argparse.ArgumentParser, help: str = "delete the run in --out and start again") -> None:
    """``--overwrite``: replace what an earlier run left in ``--out`` (never done without it)."""
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_resume(parser: argparse.ArgumentParser, help: str) -> None:
    """``--resume``: continue the run in ``--out`` (``help``: from where)."""
    parser.add_argument("--resume", action="store_true", help=help)


def add_no_progress(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    """``--no-progress`` (``progress`` False): no progress bars on stderr."""
    parser.add_argument("--no-progress", dest="progress", action="store_false", help=help)


def add_json(parser: argparse.ArgumentParser, help: str = "print the summary as JSON") -> None:
    """``--json``: the result on stdout as strict JSON (see :func:`print_json`) instead of a table."""
    parser.add_argument("--json", action="store_true", help=help)


# ---------------------------------------------------------------------------------------------
# Helpers of the handlers
# ---------------------------------------------------------------------------------------------


def print_json(data: object) -> None:
    """Strict JSON on stdout: a NaN or infinite number is printed as null, never as bare NaN."""
    print(files.dumps(data))


def load_model(args: argparse.Namespace) -> VLAAdapter:
    """The model ``--model`` names (:func:`vla_lab.registry.create`) with the CLI's options."""
    import torch

    from vla_lab import registry

    args.dtype = args.dtype or default_dtype(registry.path_of(args.model))
    args.device = str(resolve_device(args.device, "--device"))
    attention = getattr(args, "attention", None)
    return registry.create(args.model, attention=None if attention == "both" else attention,
                           dtype=getattr(torch, args.dtype), device=args.device, prompt=getattr(args, "prompt", None),
                           seed=args.seed)


def model_source(args: argparse.Namespace) -> str:
    """``--model`` in words (a preset with its seed)."""
    from vla_lab.config import PRESETS

    return f"preset {args.model} (random weights, seed {args.seed})" if args.model in PRESETS else str(args.model)


def parse_proprio(text: str | None) -> list[float] | None:
    """``--proprio v1,v2,...`` -> finite floats (None when not given)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--proprio: got {text!r}, expected comma-separated numbers") from None
    return finite_numbers(values, "--proprio").tolist()


def proprio_for(model: VLAAdapter, proprio: list[float] | None) -> tuple[list[float] | None, bool]:
    """The CLI's proprio rule: (values, already normalised?).

    A given ``--proprio`` is the raw robot state (normalised with the model's statistics when it has
    them); without one, a model that uses proprio gets a normalised zero state.
    """
    if proprio is None and model.config.use_proprio:
        return [0.0] * model.config.robot.proprio_dim, True
    return proprio, not model.config.norm_stats


def read_images(paths: list[str]) -> list[np.ndarray]:
    """The ``--image`` files as arrays (a file that is not an image is an InputError naming ``--image``)."""
    from vla_lab.processing.images import load_image

    return [np.asarray(load_image(path, "--image")) for path in paths]


def parse_tasks(text: str | None) -> list[int] | None:
    """``--tasks 0,3`` -> [0, 3] (None: every task); non-negative ids, checked against the suite later."""
    if text is None:
        return None
    try:
        tasks = [int(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"--tasks: got {text!r}, expected comma-separated task ids such as 0,3") from None
    if any(t < 0 for t in tasks):
        raise InputError(f"--tasks: got {text!r}, expected non-negative task ids")
    return tasks


def parse_init_states(trials: int | None, text: str | None, trials_flag: str = "--trials",
                      states_flag: str = "--init-states") -> range | None:
    """``--trials N`` -> 0..N-1, ``--init-states A:B`` -> A..B-1; None (all) when neither is given. The flags
    name the options in error messages (``states_flag``: the A:B option, e.g. ``--selection-states``)."""
    if trials is not None and text is not None:
        raise InputError(f"{trials_flag}/{states_flag}: got both, expected one")
    if trials is not None:
        if trials < 1:
            raise InputError(f"{trials_flag}: got {trials}, expected a positive integer")
        return range(trials)
    if text is None:
        return None
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"{states_flag}: got {text!r}, expected A:B such as 0:10") from None
    if not 0 <= low < high:
        raise InputError(f"{states_flag}: got {text!r}, expected 0 <= A < B")
    return range(low, high)


def check_libero_selection(suite: str, tasks: list[int] | None, init_states: dict[str, Any]) -> None:
    """LIBERO is installed, ``--tasks`` names tasks of ``suite`` and each init-state option (flag -> its states,
    None: all) names init states the suite has."""
    from vla_lab.worlds.libero import env as libero_env

    libero_env.require_libero()
    n = libero_env.num_tasks(suite)
    if tasks is not None and any(t >= n for t in tasks):
        raise InputError(f"--tasks: got {','.join(map(str, tasks))}, expected task ids of {suite} in 0..{n - 1}")
    available = min(libero_env.task_info(suite, t)["num_init_states"] for t in (tasks or range(n)))
    for flag, states in init_states.items():
        if states is not None and max(states) >= available:
            counted = flag in ("--trials", "--episodes-per-task")  # N init states from 0, else A:B
            got = str(len(states)) if counted else f"{min(states)}:{max(states) + 1}"
            raise InputError(f"{flag}: got {got}, expected {'at most ' + str(available) if counted else ''}"
                             f"{'' if counted else 'init states in 0..' + str(available - 1)} (of {suite})")
