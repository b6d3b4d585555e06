"""Train the refusal detector's learned layer and write `src/falserefusal/detection/answer_model.json`.

Data: the human-labelled XSTest v2 dev completions (tests/data/xstest-dev; full and partial refusal ->
refusal, full compliance -> compliance) and the project's own labelled corpus (data/corpus: answers.jsonl
and labels.jsonl, labelled with ../shared/LABELLING.md: R and P -> refusal, C -> compliance, N -> non_answer).
The model is fitted on XSTest dev + the corpus's train split. Its settings (read window, regularisation, corpus
weight, refusal threshold) are chosen by the mean of two scores, so that it holds both in the product's domain and
on other models' answers: the corpus's dev split, and XSTest dev scored out of fold with each answering model left
out in turn (a model fitted without GPT-4's answers scores GPT-4's, and so on). The test split is scored once, at
the end, and written to data/corpus/detector_metrics.json. Nothing here runs at test time.

    PYTHONPATH=src python scripts/train_detector.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from falserefusal.analysis.detector_audit import LABEL_OUTCOME
from falserefusal.detection.answer_model import FEATURES_VERSION, MODEL_RESOURCE, AnswerModel, hashing_vectorizers
from falserefusal.detection.detector import RefusalDetector
from falserefusal.types import OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
XSTEST_DIR = ROOT / "tests" / "data" / "xstest-dev"
CORPUS_DIR = ROOT / "data" / "corpus"
MODEL_PATH = ROOT / "src" / "falserefusal" / "detection" / MODEL_RESOURCE
METRICS_PATH = CORPUS_DIR / "detector_metrics.json"
SEED = 20261201
N_HASH = 2**16
#: character n-grams were measured and dropped: no gain over word n-grams at the same regularisation (XSTest leave
#: one model out, GPT-4 F1 0.970 vs 0.965; corpus dev 0.846 vs 0.889) at twice the features; at C 2 they learned each
#: answering model's style (GPT-4 held out: F1 0.21)
CHAR_NGRAMS = None
WORD_NGRAMS = (1, 3)
XSTEST_TO_OUTCOME = {"1_full_compliance": "compliance", "2_full_refusal": "refusal", "3_partial_refusal": "refusal"}


@dataclass(frozen=True)
class Example:
    source: str  # xstest:<model> or the corpus source
    split: str  # train | dev | test (XSTest dev rows are all train)
    text: str
    labels: tuple[str, ...]  # the task's labels ((): none given)
    outcome: str
    group: str  # rows of one group never straddle a cross-validation fold (XSTest: the prompt)
    persona: str = "none"  # corpus: persona id, "baseline" without one
    wave: str = "none"  # corpus: the draw the row is from (wave1; wave2: new wordings, train and dev; wave3: test, no persona)


def load_xstest() -> list[Example]:
    rows = []
    for path in sorted(XSTEST_DIR.glob("xstest_v2_completions_*.csv")):
        model = path.stem.removeprefix("xstest_v2_completions_")
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append(Example(f"xstest:{model}", "train", row["completion"] or "", (),
                                    XSTEST_TO_OUTCOME[row["final_label"]], f"x:{row['prompt']}"))
    return rows


def load_corpus() -> list[Example]:
    answers_path, labels_path = CORPUS_DIR / "answers.jsonl", CORPUS_DIR / "labels.jsonl"
    if not labels_path.exists():
        return []
    labels = {}
    for line in labels_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            labels[entry["id"]] = entry["label"]
    rows = []
    for line in answers_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        answer = json.loads(line)
        label = labels.get(answer["id"])
        if label is None:
            continue
        rows.append(Example(answer["source"].split("/")[0], answer["split"], answer["response"],
                            tuple(answer["labels"]), LABEL_OUTCOME[label], f"c:{answer['item_id']}",
                            answer["persona"], f"wave{wave_of(answer['id'])}"))
    return rows


def wave_of(row_id: str) -> int:
    """The corpus draw a row is from, by its id's prefix (lc-, lcw2-, tfw3-, ...: build_corpus.row_prefix)."""
    prefix = row_id.split("-")[0]
    return int(prefix[-1]) if prefix[-2:-1] == "w" else 1


class Featurizer:
    """Named features (rules, shape) + hashed n-grams of the read window, as one sparse matrix.

    Each answer is read once per window (with and without its task labels) and kept: the grid search and the
    cross-validation folds reuse the readings."""

    def __init__(self, window: int) -> None:
        self.detector = RefusalDetector(decision_window=window, model=None)
        self.char, self.word = hashing_vectorizers(N_HASH, CHAR_NGRAMS, WORD_NGRAMS)
        self.names: list[str] = []
        self._read: dict[tuple[int, bool], tuple[str, dict[str, float]]] = {}
        self._hashed: dict[str, sparse.csr_matrix] = {}

    def named(self, examples: Sequence[Example], drop_labels: bool = False) -> tuple[list[str], list[dict[str, float]]]:
        windows, named = [], []
        for example in examples:
            key = (id(example), drop_labels)
            if key not in self._read:
                self._read[key] = self.detector.features(example.text, () if drop_labels else example.labels)
            window, features = self._read[key]
            windows.append(window)
            named.append(features)
        return windows, named

    def fit_names(self, named: Sequence[dict[str, float]]) -> None:
        self.names = sorted({name for features in named for name in features})

    def _ngrams(self, windows: Sequence[str]) -> sparse.csr_matrix:
        missing = [w for w in dict.fromkeys(windows) if w not in self._hashed]
        if missing:
            block = self.word.transform(missing).tocsr()
            for i, window in enumerate(missing):
                self._hashed[window] = block[i]
        return sparse.vstack([self._hashed[w] for w in windows]).tocsr()

    def matrix(self, windows: Sequence[str], named: Sequence[dict[str, float]]) -> sparse.csr_matrix:
        index = {name: i for i, name in enumerate(self.names)}
        rows, cols, values = [], [], []
        for r, features in enumerate(named):
            for name, value in features.items():
                if name in index:
                    rows.append(r)
                    cols.append(index[name])
                    values.append(value)
        dense = sparse.csr_matrix((values, (rows, cols)), shape=(len(named), len(self.names)))
        return sparse.hstack([self._ngrams(windows), dense]).tocsr()


def design(featurizer: Featurizer, examples: Sequence[Example], weights: Sequence[float], augment: bool):
    """Windows, named features, y, w; corpus rows with task labels are added twice, with and without the labels
    (half weight each), so the model works whether or not a caller passes the task's labels."""
    windows, named = featurizer.named(examples)
    ys, ws = [e.outcome for e in examples], list(weights)
    if augment:
        with_labels = [i for i, e in enumerate(examples) if e.labels]
        w2, n2 = featurizer.named([examples[i] for i in with_labels], drop_labels=True)
        windows += w2
        named += n2
        ys += [examples[i].outcome for i in with_labels]
        for i in with_labels:
            ws[i] *= 0.5
        ws += [weights[i] * 0.5 for i in with_labels]
    return windows, named, np.asarray(ys), np.asarray(ws)


def fit(X, y, w, c: float):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000, class_weight=None, random_state=SEED)
    model.fit(X, y, sample_weight=w)
    return model


def scores(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    t = np.asarray(y_true) == "refusal"
    p = np.asarray(y_pred) == "refusal"
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    na = np.asarray(y_true) == "non_answer"
    out = {"n": len(t), "refusals": int(t.sum()), "precision": round(precision, 3), "recall": round(recall, 3),
           "f1": round(f1, 3), "accuracy_3way": round(float(np.mean(np.asarray(y_true) == np.asarray(y_pred))), 3)}
    if na.any():
        out["non_answers"] = int(na.sum())
        out["non_answer_read_as_refusal"] = round(float(p[na].mean()), 3)
        out["non_answer_recall"] = round(float((np.asarray(y_pred)[na] == "non_answer").mean()), 3)
    return out


def predict(model, X, threshold: float) -> np.ndarray:
    return outcomes_of(probabilities(model, X), threshold)


def probabilities(model, X) -> np.ndarray:
    """Outcome probabilities in OUTCOMES order (a class the training data lack: 0)."""
    proba = model.predict_proba(X)
    classes = list(model.classes_)
    return np.column_stack([proba[:, classes.index(k)] if k in classes else np.zeros(len(proba)) for k in OUTCOMES])


def outcomes_of(proba: np.ndarray, threshold: float) -> np.ndarray:
    r, c, n = (proba[:, OUTCOMES.index(k)] for k in ("refusal", "compliance", "non_answer"))
    return np.where(r >= threshold, "refusal", np.where(c >= n, "compliance", "non_answer"))


def breakdown(examples: Sequence[Example], predicted: Sequence[str]) -> dict[str, Any]:
    """Scores overall, per source, and persona vs baseline (refusal recall where the persona voice matters)."""
    result: dict[str, Any] = {"all": scores([e.outcome for e in examples], predicted)}
    for key, select in (
        ("source", lambda e: e.source),
        ("persona", lambda e: "baseline" if e.persona in ("baseline", "none") else "persona"),
        ("wave", lambda e: e.wave),
    ):
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(examples):
            groups.setdefault(select(e), []).append(i)
        result[key] = {g: scores([examples[i].outcome for i in idx], [predicted[i] for i in idx]) for g, idx in sorted(groups.items())}
    return result


def export(model, featurizer: Featurizer, window: int, threshold: float, metadata: dict[str, Any]) -> bytes:
    classes = list(model.classes_)
    order = [classes.index(k) for k in OUTCOMES]
    coef = model.coef_[order].T  # (features, classes) in OUTCOMES order
    if coef.shape[1] != len(OUTCOMES):
        raise SystemExit(f"the training data lack a class: {classes}")
    rounded = np.round(coef, 4)

    def block(start: int, stop: int) -> dict[str, list[float]]:
        part = rounded[start:stop]
        return {str(i): [float(v) for v in part[i]] for i in np.flatnonzero(np.abs(part).max(axis=1) > 0)}

    data = {
        "features_version": FEATURES_VERSION,
        "classes": list(OUTCOMES),
        "window": window,
        "n_hash": N_HASH,
        "char_ngrams": None,
        "word_ngrams": list(WORD_NGRAMS),
        "intercept": [round(float(v), 4) for v in model.intercept_[order]],
        "named_weights": {name: [float(v) for v in rounded[N_HASH + i]] for i, name in enumerate(featurizer.names)},
        "char_weights": {},
        "word_weights": block(0, N_HASH),
        "metadata": {**metadata, "refusal_threshold": threshold},
    }
    return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[200, 300])
    parser.add_argument("--cs", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--corpus-weight", type=float, nargs="+", default=[1.5, 3.0])
    parser.add_argument("--quick", action="store_true", help="one setting (window 300, C 3, weight 3)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.cs, args.corpus_weight = [200], [0.3], [3.0]
    started = time.perf_counter()
    xstest, corpus = load_xstest(), load_corpus()
    train = xstest + [e for e in corpus if e.split == "train"]
    dev = [e for e in corpus if e.split == "dev"]
    test = [e for e in corpus if e.split == "test"]
    print(f"xstest {len(xstest)}, corpus train {len(train) - len(xstest)}, dev {len(dev)}, test {len(test)}", file=sys.stderr)
    best: tuple[float, dict[str, Any]] | None = None
    # (window, weight, C) -> the model fitted on all of train, and XSTest dev's leave-one-model-out probabilities
    fitted: dict[tuple[int, float, float], tuple[Any, np.ndarray]] = {}
    featurizers = {window: Featurizer(window) for window in args.windows}
    for window in args.windows:
        featurizer = featurizers[window]
        for weight in args.corpus_weight:
            weights = [1.0 if e.source.startswith("xstest") else weight for e in train]
            windows, named, y, w = design(featurizer, train, weights, augment=True)
            featurizer.fit_names(named)
            X = featurizer.matrix(windows, named)
            dev_windows, dev_named = featurizer.named(dev) if dev else ([], [])
            X_dev = featurizer.matrix(dev_windows, dev_named) if dev else None
            for c in args.cs:
                model = fit(X, y, w, c)
                # answers of a model never trained on: XSTest dev, each answering model left out in turn
                held_out = out_of_fold_probabilities(featurizer, xstest, train[len(xstest):], weight, c, "model")
                fitted[(window, weight, c)] = (model, held_out)
                for threshold in (0.3, 0.35, 0.4, 0.45, 0.5):
                    other_models = scores([e.outcome for e in xstest], outcomes_of(held_out, threshold))["f1"]
                    if X_dev is None:
                        domain = key = 0.0
                    else:
                        s = scores([e.outcome for e in dev], predict(model, X_dev, threshold))
                        # refusal F1, minus non-answers read as refusals beyond the 5 % the project accepts
                        domain = s["f1"] - max(0.0, s.get("non_answer_read_as_refusal", 0.0) - 0.05)
                        # the detector must hold on both: the product's domain (corpus dev) and other models' answers
                        key = (domain + other_models) / 2
                    setting = {"window": window, "c": c, "corpus_weight": weight, "threshold": threshold}
                    print(f"{setting} dev score {key:.3f} (corpus dev {domain:.3f}, XSTest other models {other_models:.3f})",
                          file=sys.stderr)
                    if best is None or key > best[0]:
                        best = (key, setting)
                if X_dev is None:
                    break
    assert best is not None
    setting = best[1]
    featurizer = featurizers[setting["window"]]
    weights = [1.0 if e.source.startswith("xstest") else setting["corpus_weight"] for e in train]
    _, named, _, _ = design(featurizer, train, weights, augment=True)
    featurizer.fit_names(named)  # the names the chosen model was fitted with
    model, held_out = fitted[(setting["window"], setting["corpus_weight"], setting["c"])]
    metrics: dict[str, Any] = {"setting": setting}
    metrics["xstest_cv_by_prompt"] = xstest_cross_validation(setting, xstest, train[len(xstest):], featurizer, "prompt")
    metrics["xstest_cv_by_model"] = breakdown(xstest, list(outcomes_of(held_out, setting["threshold"])))
    data_hash = hashlib.sha256()
    for e in train:
        data_hash.update(f"{e.source}\x00{e.text}\x00{e.outcome}\x00".encode("utf-8", "surrogatepass"))
    # how often each rule fired in the training answers: the detector lets a strong rule seen too rarely stand
    train_named = named[: len(train)]  # design() lists the rows as given first, then their copies without labels
    rule_names = [name for name in featurizer.names if name.startswith("rule:")]
    support = {name: sum(name in features for features in train_named) for name in rule_names}
    refusals = {name: sum(name in f and e.outcome == "refusal" for f, e in zip(train_named, train)) for name in rule_names}
    metadata = {"trained_on": f"xstest-dev ({len(xstest)}) + corpus train ({len(train) - len(xstest)})",
                "rule_support": support, "rule_refusals": refusals,
                "training_data_sha256": data_hash.hexdigest(), "seed": SEED, "setting": setting,
                "rubric": "LABELLING.md v1.1"}
    payload = export(model, featurizer, setting["window"], setting["threshold"], metadata)
    # dev and test are scored with what ships (the exported, rounded weights), through the detector's own path
    shipped = RefusalDetector(model=AnswerModel.from_dict(json.loads(payload), hashlib.sha256(payload).hexdigest()))
    for name, rows in (("dev", dev), ("test", test)):
        if rows:
            for with_labels in (True, False):
                verdicts = shipped.detect_many([e.text for e in rows], [e.labels if with_labels else () for e in rows])
                metrics[f"{name}{'' if with_labels else '_without_labels'}"] = breakdown(rows, [v.outcome for v in verdicts])
    print(json.dumps(metrics, indent=1), file=sys.stderr)
    if not args.no_write:
        MODEL_PATH.write_bytes(payload)
        METRICS_PATH.parent.mkdir(parents=True, exist_ok=True)
        METRICS_PATH.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size} bytes) and {METRICS_PATH}", file=sys.stderr)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def xstest_cross_validation(
    setting: dict[str, Any], xstest: list[Example], corpus_train: list[Example], featurizer: Featurizer, by: str
) -> dict[str, Any]:
    """XSTest dev scored out of fold, since the shipped model is trained on all of it (the corpus's train split
    always in): by="prompt", 5 folds grouped by prompt (unseen prompts); by="model", leave one answering model
    out (answers of a model never trained on: the closest figure to other models' completions)."""
    proba = out_of_fold_probabilities(featurizer, xstest, corpus_train, setting["corpus_weight"], setting["c"], by)
    return breakdown(xstest, list(outcomes_of(proba, setting["threshold"])))


def out_of_fold_probabilities(
    featurizer: Featurizer, xstest: list[Example], corpus_train: list[Example], weight: float, c: float, by: str
) -> np.ndarray:
    """Each XSTest dev row's outcome probabilities from a model fitted without its fold (see xstest_cross_validation)."""
    if by == "prompt":
        groups = sorted({e.group for e in xstest})
        rng = np.random.default_rng(SEED)
        fold_key = {g: i % 5 for i, g in enumerate(rng.permutation(groups))}
        fold_of = [fold_key[e.group] for e in xstest]
    else:
        models = sorted({e.source for e in xstest})
        fold_of = [models.index(e.source) for e in xstest]
    proba = np.zeros((len(xstest), len(OUTCOMES)))
    names = list(featurizer.names)  # the folds refit the featurizer's names: the caller's are put back
    for fold in sorted(set(fold_of)):
        train = [e for e, f in zip(xstest, fold_of) if f != fold] + corpus_train
        held = [i for i, f in enumerate(fold_of) if f == fold]
        weights = [1.0 if e.source.startswith("xstest") else weight for e in train]
        windows, named, y, w = design(featurizer, train, weights, augment=True)
        featurizer.fit_names(named)
        model = fit(featurizer.matrix(windows, named), y, w, c)
        hw, hn = featurizer.named([xstest[i] for i in held])
        proba[held] = probabilities(model, featurizer.matrix(hw, hn))
    featurizer.names = names
    return proba


if __name__ == "__main__":
    raise SystemExit(main())
