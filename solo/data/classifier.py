"""The optional quality classifier: fastText's idea, trained at the start of the data stage from
positive and negative examples the user gives, in numpy.

fastText's supervised model averages the vectors of a document's words and word bigrams (hashed
into a fixed number of buckets) and feeds the average to a linear classifier. With two labels the
vectors and the classifier fold into one weight per bucket, so the model is a logistic regression
over the document's hashed unigram and bigram frequencies:

    features  lowercase words → xxhash64 of each word and of each pair of neighbours → hash mod buckets
    score     sigmoid(bias + the mean of the weights of the document's features): P(keep)

Training is full batch (Adam, no shuffling, one thread of numpy sums), so the same examples and
settings give the same weights on every machine; a seeded share of each class is held out and the
model's accuracy on it is what the report shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from solo.config import checkout_root
from solo.data.config import InputSpec, QualityClassifierConfig
from solo.data.files import parse_file, resolve_files
from solo.data.ngrams import ngram_hashes, word_hashes, words
from solo.data.normalize import normalize
from solo.errors import SoloError

MODEL_FILE = "quality_classifier.npz"


def features(text: str, buckets: int) -> np.ndarray:
    """The buckets of the text's words and word bigrams, one entry per occurrence."""
    hashed = word_hashes(words(text))
    return (np.concatenate([hashed, ngram_hashes(hashed, 2)]) % np.uint64(buckets)).astype(np.int64)


@dataclass(frozen=True)
class Model:
    weights: np.ndarray  # float32, one per bucket
    bias: float

    def score(self, text: str) -> float:
        """P(the text is like the positive examples); a text with no words scores the bias alone."""
        found = features(text, self.weights.size)
        logit = self.bias + (float(self.weights[found].mean()) if found.size else 0.0)
        return float(1 / (1 + np.exp(-logit)))


def example_files(path: str) -> list[Path]:
    resolved = (checkout_root() / Path(path).expanduser()).resolve()
    return resolve_files(InputSpec(path=str(resolved)))


def read_examples(path: str, text_field: str) -> list[str]:
    """Texts of an example file or folder, read as inputs are and normalized as documents are;
    corrupt or empty records are skipped."""
    texts = []
    for file in example_files(path):
        spec = InputSpec(path=str(file), text_field=text_field, id_field=None)
        for record in parse_file(spec, file, file.read_bytes()):
            text = normalize(record["text"]) if not record["reason"] else ""
            if text:
                texts.append(text)
    if not texts:
        raise SoloError(f"quality classifier: no examples in {path} (jsonl/json with field {text_field!r}, "
                        "or text files)")
    return texts


def fingerprint(config: QualityClassifierConfig) -> list:
    """What the trained model depends on: its settings and its example files (path, size, mtime)."""
    files = [[str(f), f.stat().st_size, f.stat().st_mtime_ns]
             for path in (config.positives, config.negatives) for f in example_files(path)]
    return [config.model_dump(mode="json"), files]


def fit(texts: list[str], labels: np.ndarray, config: QualityClassifierConfig) -> Model:
    """Logistic regression over each text's feature frequencies, full-batch Adam from zero."""
    rows, columns, values = [], [], []
    for row, text in enumerate(texts):
        found, counts = np.unique(features(text, config.buckets), return_counts=True)
        rows.append(np.full(found.size, row))
        columns.append(found)
        values.append(counts / max(1, counts.sum()))
    rows, columns, values = np.concatenate(rows), np.concatenate(columns), np.concatenate(values)
    weights, bias = np.zeros(config.buckets), 0.0
    moments = [np.zeros(config.buckets), np.zeros(config.buckets), 0.0, 0.0]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, config.epochs + 1):
        logits = bias + np.bincount(rows, weights=weights[columns] * values, minlength=len(texts))
        error = (1 / (1 + np.exp(-logits)) - labels) / len(texts)  # d(mean log loss)/d(logit)
        grad_w = np.bincount(columns, weights=error[rows] * values, minlength=config.buckets)
        grad_b = float(error.sum())
        moments[0] = beta1 * moments[0] + (1 - beta1) * grad_w
        moments[1] = beta2 * moments[1] + (1 - beta2) * grad_w ** 2
        moments[2] = beta1 * moments[2] + (1 - beta1) * grad_b
        moments[3] = beta2 * moments[3] + (1 - beta2) * grad_b ** 2
        scale = config.learning_rate * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        weights -= scale * moments[0] / (np.sqrt(moments[1]) + eps)
        bias -= scale * moments[2] / (np.sqrt(moments[3]) + eps)
    return Model(weights.astype(np.float32), float(bias))


def train(config: QualityClassifierConfig) -> tuple[Model, dict]:
    """Read the examples, hold out a seeded share of each class, fit on the rest; the model and its
    numbers (examples, held-out accuracy)."""
    positives = read_examples(config.positives, config.text_field)
    negatives = read_examples(config.negatives, config.text_field)
    rng = np.random.default_rng(config.seed)
    train_texts, train_labels, held_texts, held_labels = [], [], [], []
    for label, texts in ((1.0, positives), (0.0, negatives)):
        order = rng.permutation(len(texts))
        held = round(config.held_out * len(texts)) if len(texts) > 1 else 0
        held = min(max(held, 1 if len(texts) > 1 else 0), len(texts) - 1)
        held_texts += [texts[i] for i in order[:held]]
        held_labels += [label] * held
        train_texts += [texts[i] for i in order[held:]]
        train_labels += [label] * (len(texts) - held)
    model = fit(train_texts, np.array(train_labels), config)
    correct = sum((model.score(t) >= config.threshold) == (y == 1.0) for t, y in zip(held_texts, held_labels))
    stats = {"positives": len(positives), "negatives": len(negatives), "trained_on": len(train_texts),
             "held_out": len(held_texts), "held_out_accuracy": round(correct / max(1, len(held_texts)), 4),
             "threshold": config.threshold, "model": MODEL_FILE}
    return model, stats


def save(model: Model, stats: dict, key: list, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, weights=model.weights, bias=np.float64(model.bias),
             meta=np.array(json.dumps({"stats": stats, "key": key})))
    partial.replace(path)  # whole or absent: a killed save is not mistaken for a model


def load(path: Path) -> tuple[Model, dict, list]:
    with np.load(path) as saved:
        meta = json.loads(str(saved["meta"]))
        return Model(saved["weights"], float(saved["bias"])), meta["stats"], meta["key"]


def prepare(config: QualityClassifierConfig, output: Path, progress=print) -> tuple[Model, dict]:
    """The model saved beside the stage's output when it was trained from these very examples and
    settings (a resumed run), else one trained now and saved there."""
    path = output / MODEL_FILE
    key = json.loads(json.dumps(fingerprint(config)))  # as it reads back from the file
    if path.is_file():
        model, stats, saved_key = load(path)
        if saved_key == key:
            progress(f"data: reusing the quality classifier in {path}")
            return model, stats
    model, stats = train(config)
    save(model, stats, key, path)
    progress(f"data: quality classifier trained on {stats['trained_on']:,} examples; held-out accuracy "
             f"{stats['held_out_accuracy']:.3f} on {stats['held_out']:,}; saved to {path}")
    return model, stats
