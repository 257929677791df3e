#!/usr/bin/env python3
"""Stage 9 of the HE benchmark harness (client_postprocess): write one score per pair in the harness's output format."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark/, home of the cfsubmission library

from cfsubmission import stages

if __name__ == "__main__":
    sys.exit(stages.client_postprocess(sys.argv[1:]))
