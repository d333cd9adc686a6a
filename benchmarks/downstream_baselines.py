"""The models the downstream suite compares, each returning test-set class probabilities.

Classical baselines (scikit-learn logistic regression, its inverse regularisation ``C``
chosen from `C_GRID` by validation log-loss, then refitted on the training split):

- `kmer_logistic`: frequencies of the 4^k overlapping k-mers of each sequence;
- `hvg_pca_logistic`: cells normalised to 10^4 counts and log1p-transformed, the
  `N_HVG` genes of highest dispersion (variance / mean) in the training cells, a PCA of
  `N_PCS` components fitted on the training cells;
- `vae_logistic`: the posterior mean latent of a `zoo.VAENormalizer` trained on the
  training cells' counts (labels unused).

Neural models are trained by `finetuning.train.fine_tune` (`neural`) with one
`FineTuneConfig` for all, so each has the same step budget; only the strategy differs.
Every model sees the training split only (plus the validation split for early stopping
and for choosing ``C``).
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from finetuning.run import task_model
from finetuning.tasks import Task
from finetuning.train import FineTuneConfig, fine_tune
from zoo.sequence.cnn import SequenceEmbedding, SequenceEmbeddingConfig

C_GRID = (0.01, 0.1, 1.0, 10.0)
N_HVG = 2000
N_PCS = 50


def fit_logistic(features: dict[str, np.ndarray], task: Task, n_classes: int) -> np.ndarray:
    """Test probabilities ``(n, n_classes)`` of a standardised multinomial logistic
    regression on ``features[split]``, ``C`` chosen by validation log-loss."""
    scaler = StandardScaler().fit(features["train"])
    x = {k: scaler.transform(v) for k, v in features.items()}
    classes = np.arange(n_classes)

    def fitted(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=2000).fit(x["train"], task.train.labels)

    def full(model: LogisticRegression, inputs: np.ndarray) -> np.ndarray:
        out = np.zeros((len(inputs), n_classes))
        out[:, model.classes_] = model.predict_proba(inputs)
        return out / out.sum(1, keepdims=True)

    losses = {
        c: log_loss(task.validation.labels, full(fitted(c), x["validation"]), labels=classes)
        for c in C_GRID
    }
    return full(fitted(min(losses, key=losses.get)), x["test"])


def kmer_frequencies(sequences: list[str], k: int) -> np.ndarray:
    """``(n, 4^k)`` frequencies of the overlapping k-mers over ACGT (k-mers with other
    letters are skipped)."""
    index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    out = np.zeros((len(sequences), len(index)), np.float32)
    for row, sequence in enumerate(sequences):
        hits = [index.get(sequence[i : i + k], -1) for i in range(len(sequence) - k + 1)]
        hits = np.asarray([h for h in hits if h >= 0], np.int64)
        out[row] = np.bincount(hits, minlength=len(index)) / max(len(hits), 1)
    return out


def kmer_logistic(task: Task, k: int = 6) -> np.ndarray:
    """Test probabilities of logistic regression on k-mer frequencies."""
    splits = {"train": task.train, "validation": task.validation, "test": task.test}
    features = {name: kmer_frequencies(s.inputs, k) for name, s in splits.items()}
    return fit_logistic(features, task, len(task.classes))


def log_normalised(counts: np.ndarray) -> np.ndarray:
    """``log1p(10^4 * counts / total)`` per cell."""
    totals = np.maximum(counts.sum(1, keepdims=True), 1.0)
    return np.log1p(1e4 * counts / totals)


def hvg_pca_logistic(task: Task) -> np.ndarray:
    """Test probabilities of logistic regression on a PCA of highly variable genes."""
    x = {
        "train": log_normalised(task.train.inputs),
        "validation": log_normalised(task.validation.inputs),
        "test": log_normalised(task.test.inputs),
    }
    mean = x["train"].mean(0)
    dispersion = x["train"].var(0) / np.maximum(mean, 1e-12)
    genes = np.argsort(-dispersion)[:N_HVG]
    n_components = min(N_PCS, len(task.train) - 1, len(genes))
    pca = PCA(n_components, random_state=0).fit(x["train"][:, genes])
    features = {k: pca.transform(v[:, genes]) for k, v in x.items()}
    return fit_logistic(features, task, len(task.classes))


def vae_logistic(task: Task, epochs: int, *, seed: int = 0, progress: bool = True) -> np.ndarray:
    """Test probabilities of logistic regression on a `zoo.VAENormalizer` latent (trained
    for `epochs` passes over the training cells)."""
    from zoo.vae.fit import fit_vae, latent_mean
    from zoo.vae.training import VAETrainingConfig

    training = VAETrainingConfig(epochs=epochs, kl_warmup_epochs=max(1, epochs // 2))
    model = fit_vae(
        task.train.inputs, key=jax.random.key(seed), training=training, progress=progress
    )
    features = {
        "train": latent_mean(model, task.train.inputs),
        "validation": latent_mean(model, task.validation.inputs),
        "test": latent_mean(model, task.test.inputs),
    }
    return fit_logistic(features, task, len(task.classes))


def fresh_cnn(seed: int = 1) -> SequenceEmbedding:
    """A `zoo.SequenceEmbedding` with the default config, freshly initialised."""
    return SequenceEmbedding(SequenceEmbeddingConfig(), key=jax.random.key(seed))


def neural(task: Task, backbone, config: FineTuneConfig, *, progress: bool = True) -> np.ndarray:
    """Test probabilities of `backbone` with a linear head fine-tuned on `task`."""
    model = task_model(task, backbone, seed=config.seed)
    return fine_tune(model, task, config, progress=progress).test_outputs
