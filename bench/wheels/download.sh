#!/usr/bin/env bash
# Download, here (with network), the wheels bench/gpu_check.py needs on the GPU machine, which has no
# network, Python 3.12, PyTorch 2.11 (CUDA 13), transformers 5.17, accelerate, safetensors and tokenizers.
# They land in bench/wheels/dist/ (ignored by git; the device run carries it); about 27 MiB in all.
# On the GPU machine:  pip install --no-index --no-deps bench/wheels/dist/*.whl   (docs/gpu.md)
set -euo pipefail
cd "$(dirname "$0")"
rm -rf dist && mkdir -p dist
pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -d dist -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
ls -l dist/*.whl | awk '{total += $5; printf "%8.1f MiB  %s\n", $5 / 1048576, $9} END {printf "%8.1f MiB  in all\n", total / 1048576}'
