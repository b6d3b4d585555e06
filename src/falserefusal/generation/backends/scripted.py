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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
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


def item_factor(item_sd: float, seed: int, task: str, item: str) -> float:
    """An item's multiplicative factor exp(sd z - sd²/2), z ~ N(0, 1) from the seed, task and item (mean 1)."""
    z = float(norm.ppf(min(max(_uniform(seed, "item", task, item), 1e-12), 1 - 1e-12)))
    return math.exp(item_sd * z - item_sd * item_sd / 2)


# ----- the model over a whole batch or design: the backend and the simulations share it ------------------------
def hash_uniforms(seed: int, stream: str, keys: Iterable[str]) -> np.ndarray:
    """`_uniform(seed, stream, key)` for many keys at once (the same SHA-256, the same floats)."""
    prefix = f"{seed}|{stream}|"
    digests = b"".join(hashlib.sha256((prefix + key).encode("utf-8")).digest()[:8] for key in keys)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


@dataclass(frozen=True)
class Draws:
    """The scripted backend's three uniforms per case for one model seed (they do not depend on p or rho)."""

    shared: np.ndarray  # the block's draw, per case
    own: np.ndarray
    couple: np.ndarray
    seed: int = 0  # the effective model seed (the run's --seed plus the spec's offset): also draws the item factors

    @classmethod
    def compute(cls, design: pd.DataFrame, seed: int) -> "Draws":
        codes, blocks = pd.factorize(design["block"])
        shared = hash_uniforms(seed, "block", blocks)[codes]
        case_ids = design["case_id"].tolist()
        return cls(shared, hash_uniforms(seed, "case", case_ids), hash_uniforms(seed, "couple", case_ids), seed)

    def subset(self, mask: np.ndarray) -> "Draws":
        """The draws of the rows in `mask` (e.g. a design's first n blocks)."""
        return Draws(self.shared[mask], self.own[mask], self.couple[mask], self.seed)

    def latent(self, rho: float) -> np.ndarray:
        """`ScriptedBackend.draw` per case: the block's draw with probability rho, else the case's own."""
        return np.where(self.couple < rho, self.shared, self.own)


def refusal_probabilities(spec: ScriptedSpec, design: pd.DataFrame, seed: int | None = None) -> np.ndarray:
    """`ScriptedSpec.refusal_probability` for every row (base + the shifts of matching levels, times the item's
    factor when `item_sd` > 0, which needs the effective model `seed`; clipped)."""
    shift = np.zeros(len(design))
    for (factor, level), value in spec.shifts.items():
        if factor in design.columns:
            shift = shift + value * (design[factor].to_numpy() == level)
    p = spec.base + shift
    if spec.item_sd:
        if seed is None:
            raise FalseRefusalError(
                "simulation: a scripted model with item_sd needs the model seed for its item factors"
            )
        pairs = design[["task", "item"]].drop_duplicates()
        factors = {(t, i): item_factor(spec.item_sd, seed, t, i) for t, i in zip(pairs["task"], pairs["item"])}
        p = p * np.array([factors[key] for key in zip(design["task"], design["item"])])
    return np.clip(p, 0.0, 1.0)


def scripted_refusals(spec: ScriptedSpec, design: pd.DataFrame, draws: Draws) -> np.ndarray:
    """Whether ScriptedBackend answers each case with its refusal text: u < p, u the block's or the case's draw."""
    return draws.latent(spec.rho) < refusal_probabilities(spec, design, draws.seed)


#: the scripted refusal, in a persona's voice
REFUSAL = "I'm sorry, but I can't help with that. As this persona, I don't feel comfortable making that judgement."
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

    def answers(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """The batch's answers: a non-answer, the refusal text or a label, from the vectorised draws above (a case
        refuses when its latent draw, the block's with probability rho, else its own, lies below p(case))."""
        design = pd.DataFrame([{**request.factors, "case_id": request.case_id} for request in requests])
        if design.empty:
            return []
        case_ids = design["case_id"].tolist()
        babbles = hash_uniforms(self.seed, "non_answer", case_ids) < self.spec.non_answer
        refuses = scripted_refusals(self.spec, design, Draws.compute(design, self.seed))
        picks = hash_uniforms(self.seed, "label", case_ids)
        texts = []
        for request, babble, refuse, pick in zip(requests, babbles, refuses, picks):
            if babble:
                texts.append(NON_ANSWER)
            elif refuse:
                texts.append(REFUSAL)
            else:
                labels = [label for label in request.factors.get("labels", "").split("|") if label] or ["yes"]
                texts.append(f"The answer is: {labels[int(pick * len(labels))]}.")
        return texts

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
        texts = self.answers(requests)
        return [Completion(text=text, n_tokens=len(text.split()), finish_reason="stop") for text in texts]

    def close(self) -> None:
        pass
