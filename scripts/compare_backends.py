"""Compare two results.jsonl files of the same seeded cases: share of identical responses and of identical verdicts.

Reproduce the README's served-vs-transformers figure (SmolLM2 GGUF, llama.cpp server on port 8765):
    python -m llama_cpp.server --model "$(python -c 'from falserefusal.generation.backends import default_model_path as p; print(p())')" \
        --model_alias smollm2 --port 8765 &
    falserefusal run --samples 12 --tasks politeness --no-cache --report-dir cmp/hf
    falserefusal run --model openai:smollm2 --base-url http://127.0.0.1:8765/v1 \
        --samples 12 --tasks politeness --no-cache --profile smoke --report-dir cmp/served
    python scripts/compare_backends.py cmp/hf/results.jsonl cmp/served/results.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

from falserefusal.run.results import read_results


def main(first: str, second: str) -> None:
    _, a = read_results(Path(first))
    _, b = read_results(Path(second))
    by_case = {r.case.case_id: r for r in b}
    pairs = [(r, by_case[r.case.case_id]) for r in a if r.case.case_id in by_case]
    if not pairs:
        raise SystemExit("no common cases: were both runs made with the same seed, samples and tasks?")
    same_text = sum(x.response == y.response for x, y in pairs)
    # the transformers backend stops a row once its verdict is settled; a served model writes the whole answer
    prefix = sum(x.response.startswith(y.response) or y.response.startswith(x.response) for x, y in pairs)
    same_verdict = sum(x.refused == y.refused for x, y in pairs)
    print(f"cases compared: {len(pairs)}")
    print(f"identical responses: {same_text}/{len(pairs)} = {same_text / len(pairs):.1%}")
    print(f"one response a prefix of the other: {prefix}/{len(pairs)} = {prefix / len(pairs):.1%}")
    print(f"identical verdicts:  {same_verdict}/{len(pairs)} = {same_verdict / len(pairs):.1%}")
    either = sum(x.refused or y.refused for x, y in pairs)
    both = sum(x.refused and y.refused for x, y in pairs)
    print(f"refusals in both, of refusals in either: {both}/{either}")
    print(f"refusal rate: {sum(x.refused for x, _ in pairs) / len(pairs):.1%} vs {sum(y.refused for _, y in pairs) / len(pairs):.1%}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
