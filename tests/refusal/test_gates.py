"""The product suite in this repository: the packaged gate tests (src/falserefusal/suite/test_gates.py), one copy.

Run it with `pytest` (embedded SmolLM2) or `pytest --model <hub id | folder | .gguf>`; see the README. Installed
elsewhere, `pytest --pyargs falserefusal` runs the same items.
"""

from falserefusal.suite.test_gates import (  # noqa: F401  (pytest collects the imported test functions)
    test_added_gate,
    test_noninferiority,
    test_noninferiority_persona,
    test_persona_disparity,
    test_refusal_rate,
)
