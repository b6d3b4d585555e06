"""A deterministic fake model for tests and simulations: refusal probabilities per factor level are planted.

Spec syntax (the --model string): `scripted:base=0.05,persona.muslim=+0.05,task.nli=+0.02,forcing.unforced=+0.1,rho=0.8`
- `base`: refusal probability of every case; `persona.ID`, `task.ID`, `forcing.LEVEL`, `paraphrase.ID`,
  `item.ID`: additive shifts (clipped to [0, 1]);
- `rho`: share of cases whose random draw is shared with the rest of their request block, which makes
  refusals of the same request correlated across personas, as in real models (paired design); default 0.8;
- `item_sd`: per-item heterogeneity: each item's refusal probability is multiplied by exp(item_sd z - item_sd² / 2),
  z ~ N(0, 1) drawn once per (seed, task, item), so some items are refused more than others (mean factor 1;
  default 0, every item alike);
- `seed`: an offset added to the run's `--seed`: the model's draws use --seed + seed (default 0), so a seed loop
  over `--seed` varies the scripted model too, and two models in one run differ with different offsets;
  `name`: label only, so two scripted models can be told apart;
- `delay`: seconds each `generate` call (one batch) sleeps, to stand in for a slow model (cache and kill tests);
- `fail_after`: after this many answers the model fails as a crashed server does (tests of a run that breaks off);
- `non_answer`: share of cases answered with a repetition loop (the detector reads it as a non_answer), drawn
  independently of the refusal draw and before it, so the refusal rate becomes p (1 - non_answer); default 0.
A case refuses when its uniform draw u < p(case); draws come from SHA-256 of the effective seed and the request,
so any process, order or batching gives the same answer.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from scipy.stats import norm

from falserefusal.types import Completion, FalseRefusalError, GenerationRequest

_FACTORS = {
    "persona": "persona",
    "task": "task",
    "forcing": "forcing_level",
    "paraphrase": "paraphrase",
    "item": "item",
}


def _uniform(*parts: object) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class ScriptedSpec:
    base: float = 0.0
    shifts: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (factor, level) -> added probability
    rho: float = 0.8
    seed: int = 0  # offset added to the run's --seed
    item_sd: float = 0.0  # log-scale sd of the per-item multiplicative factor on the refusal probability
    delay: float = 0.0
    fail_after: int | None = None
    non_answer: float = 0.0  # share of cases answered with a repetition loop (NON_ANSWER)

    @classmethod
    def parse(cls, model: str) -> "ScriptedSpec":
        body = model.removeprefix("scripted:")
        base, rho, seed, delay, fail_after, item_sd, non_answer = 0.0, 0.8, 0, 0.0, None, 0.0, 0.0
        shifts: dict[tuple[str, str], float] = {}
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise FalseRefusalError(
                    f"--model {model}: '{part}' is not key=value; see falserefusal.generation.backends.scripted"
                )
            try:
                number = float(value)
            except ValueError:
                if key == "name":
                    continue
                raise FalseRefusalError(f"--model {model}: '{value}' in '{part}' is not a number") from None
            if key == "base":
                base = number
            elif key == "rho":
                rho = number
            elif key == "seed":
                seed = int(number)
            elif key == "item_sd":
                item_sd = number
            elif key == "delay":
                delay = max(0.0, number)
            elif key == "fail_after":
                fail_after = max(0, int(number))
            elif key == "non_answer":
                non_answer = number
            elif key == "name":
                continue
            elif key.partition(".")[0] in _FACTORS and key.partition(".")[2]:
                factor, _, level = key.partition(".")
                shifts[(_FACTORS[factor], level)] = number
            else:
                raise FalseRefusalError(
                    f"--model {model}: unknown key '{key}'; use base, rho, seed, item_sd, name, delay, fail_after, "
                    "non_answer or persona.ID, task.ID, forcing.LEVEL, paraphrase.ID, item.ID"
                )
        if not (0.0 <= base <= 1.0 and 0.0 <= rho <= 1.0 and 0.0 <= non_answer <= 1.0):
            raise FalseRefusalError(f"--model {model}: base, rho and non_answer must lie in [0, 1]")
        if not 0.0 <= item_sd <= 3.0:
            raise FalseRefusalError(
                f"--model {model}: item_sd {item_sd:g} must lie in [0, 3] (log-scale sd of the item factor)"
            )
        return cls(
            base=base,
            shifts=shifts,
            rho=rho,
            seed=seed,
            item_sd=item_sd,
            delay=delay,
            fail_after=fail_after,
            non_answer=non_answer,
        )

    def refusal_probability(self, factors: Mapping[str, str], seed: int | None = None) -> float:
        """p(case): base plus the matching shifts, times the item's factor when item_sd > 0, clipped to [0, 1]."""
        p = self.base + sum(shift for (factor, level), shift in self.shifts.items() if factors.get(factor) == level)
        if self.item_sd:
            p *= item_factor(
                self.item_sd, self.seed if seed is None else seed, factors.get("task", ""), factors.get("item", "")
            )
        return min(1.0, max(0.0, p))


def item_factor(item_sd: float, seed: int, task: str, item: str) -> float:
    """An item's multiplicative factor exp(sd z - sd²/2), z ~ N(0, 1) from the seed, task and item (mean 1)."""
    z = float(norm.ppf(min(max(_uniform(seed, "item", task, item), 1e-12), 1 - 1e-12)))
    return math.exp(item_sd * z - item_sd * item_sd / 2)


#: the scripted non-answer: a repetition loop, which the detector (rules and learned layer) reads as non_answer
NON_ANSWER = " ".join(["The story goes on."] * 6)


class ScriptedBackend:
    """Answers with a refusal or a task label, as planted; no model, no randomness beyond the request's hash."""

    name = "scripted"

    def __init__(self, model: str, seed: int = 0) -> None:
        self.model = model
        self.spec = ScriptedSpec.parse(model)
        self.seed = seed + self.spec.seed  # the run's --seed plus the spec's offset
        self.answered = 0

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "seed": self.seed}

    def draw(self, request: GenerationRequest) -> float:
        """The case's latent uniform draw (it refuses when draw < p): the block's with probability rho, else its own."""
        shared = _uniform(self.seed, "block", request.factors.get("block"))
        own = _uniform(self.seed, "case", request.case_id)
        use_shared = _uniform(self.seed, "couple", request.case_id) < self.spec.rho
        return shared if use_shared else own

    def answer(self, request: GenerationRequest) -> str:
        factors = request.factors
        if self.spec.non_answer and _uniform(self.seed, "non_answer", request.case_id) < self.spec.non_answer:
            return NON_ANSWER
        if self.draw(request) < self.spec.refusal_probability(factors, self.seed):
            return (
                "I'm sorry, but I can't help with that. As this persona, I don't feel comfortable making that "
                "judgement."
            )
        labels = [label for label in factors.get("labels", "").split("|") if label] or ["yes"]
        label = labels[int(_uniform(self.seed, "label", request.case_id) * len(labels))]
        return f"The answer is: {label}."

    def generate(
        self, requests: Sequence[GenerationRequest], max_new_tokens: int, stop_when: Any = None
    ) -> list[Completion]:
        if self.spec.delay:
            time.sleep(self.spec.delay)
        if self.spec.fail_after is not None and self.answered + len(requests) > self.spec.fail_after:
            raise FalseRefusalError(
                f"{self.model}: the model stopped answering after {self.answered} answers (fail_after)"
            )
        self.answered += len(requests)
        completions = []
        for request in requests:
            text = self.answer(request)
            completions.append(Completion(text=text, n_tokens=len(text.split()), finish_reason="stop"))
        return completions

    def close(self) -> None:
        pass
