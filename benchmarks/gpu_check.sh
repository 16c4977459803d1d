#!/usr/bin/env bash
# One command for one device call: check and measure every GPU path of lensdask (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh                  # on a lent GPU machine: installs .whl/ (make gpu-kit), writes $OUT
#   benchmarks/gpu_check.sh --cpu --tiny     # anywhere, in a few minutes: the same steps on the CPU (CI runs it)
#
# The report is $OUT/gpu_report.json (OUT unset: ./gpu-check-out), with gpu_summary.txt and gpu_check.log.
# PYTHON picks the interpreter (default python3: on the device image, the one that holds PyTorch).
# Other options: python3 benchmarks/gpu_check.py --help.
set -u
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
