"""The product suite in this repository: the packaged gate tests (src/falserefusal/suite/test_gates.py), one copy.

Run it with `pytest` (embedded SmolLM2) or `pytest --model <hub id | folder | .gguf>`; see the README. Installed
elsewhere, `pytest --pyargs falserefusal` runs the same items.
"""

# in the packaged module's order (pytest collects names in the order they are bound): rate gates run first, as before
from falserefusal.suite.test_gates import (  # noqa: F401,I001  (pytest collects the imported test functions)
    test_refusal_rate,
    test_non_answer_rate,
    test_persona_disparity,
    test_noninferiority,
    test_noninferiority_persona,
    test_added_gate,
    test_intersectional_excess,
)
