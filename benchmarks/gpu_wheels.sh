#!/usr/bin/env bash
# The wheels gpu_check.sh's serving step needs on the GPU machine, which lacks the `serve` extra (its image has
# anyio, h11, click and typing-extensions): into .whl/ (ignored by git), for the
# machine's Python 3.12 on x86-64. Run here, then give the device call `carry: [".whl"]`.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
# the versions this project's CI installs (2026-12-04); --no-deps: each one the image lacks is named
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  annotated-doc==0.0.7 typing-inspection==0.4.5 uvicorn==0.55.0 python-multipart==0.0.34 \
  opentelemetry-api==1.45.2
ls -l .whl
