"""A small softmax classifier for images; its penultimate features score sample quality (minidiff/quality.py).

logits = W_3 f(x) + b_3 with features f(x) from an MLP (x flattened -> 256 -> 64, ReLU) or a small
conv net (3x3 conv 16, stride-2 3x3 conv 32, ReLU each, flatten -> 64, ReLU). The loss is the mean
cross-entropy -log softmax(logits)_y in nats per image (docs/training.md §7).
"""
import numpy as np

from minidiff import nn, ops
from minidiff.autograd import Tensor, no_grad, unwrap
from minidiff.backend import to_numpy, xp
from minidiff.models.base import loss_figure, register


def one_hot(labels, num_classes, dtype):
    """(B,) integer labels -> (B, K) one-hot array on the labels' backend."""
    labels = unwrap(labels)
    return (labels[:, None] == xp().arange(num_classes)[None, :]).astype(dtype)


def cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)_y (nats per example)."""
    target = one_hot(labels, logits.shape[-1], logits.dtype)
    return ops.neg(ops.mean(ops.sum(ops.mul(ops.log_softmax(logits, -1), target), axis=-1)))


@register
class Classifier(nn.Module):
    name = "classifier"
    TRAIN_DEFAULTS = dict(steps=1000, batch_size=128, lr=1e-3, warmup_steps=50, ema_decay=0.99)

    def __init__(self, image_shape=(1, 8, 8), num_classes=10, kind="mlp", hidden=256, features=64,
                 dropout=0.1, dtype=None):
        super().__init__()
        self.hparams = {"image_shape": list(image_shape), "num_classes": num_classes, "kind": kind,
                        "hidden": hidden, "features": features, "dropout": dropout}
        c, h, w = image_shape
        if kind == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden, dtype=dtype), nn.ReLU(),
                                      nn.Dropout(dropout), nn.Linear(hidden, features, dtype=dtype), nn.ReLU())
        elif kind == "conv":
            flat = 32 * ((h + 1) // 2) * ((w + 1) // 2)
            self.body = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1, dtype=dtype), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1, dtype=dtype), nn.ReLU(),
                                      nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, features, dtype=dtype),
                                      nn.ReLU())
        else:
            raise ValueError(f"classifier kind must be 'mlp' or 'conv', got {kind!r}")
        self.head = nn.Linear(features, num_classes, dtype=dtype)

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape, "num_classes": dataset.num_classes}

    def figures(self, out, dataset, trainer, rng):
        return [loss_figure(trainer, out, "cross-entropy (nats)")] if trainer else []

    def forward(self, x):
        """Logits (B, K) for images x (B, C, H, W)."""
        return self.head(self.body(x))

    def loss(self, batch, rng=None):
        x, y = batch
        logits = self(Tensor(x))
        accuracy = float(to_numpy((logits.data.argmax(axis=1) == y).mean()))
        return cross_entropy(logits, y), {"accuracy": accuracy}

    def evaluate(self, x, y, rng=None):
        logits = self(Tensor(x)).data
        return {"test_loss_nats": float(to_numpy(cross_entropy(logits, y))),
                "test_accuracy": float(to_numpy((logits.argmax(axis=1) == y).mean()))}

    # ------------------------------------------------------------ inference on arrays (eval mode, batched)
    def _batched(self, fn, x, batch_size=512):
        was_training = self.training
        self.eval()
        with no_grad():
            parts = [to_numpy(fn(Tensor(xp().asarray(x[i:i + batch_size]))).data)
                     for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return np.concatenate(parts)

    def logits(self, x):
        return self._batched(self.forward, x)

    def features(self, x):
        """Penultimate activations f(x) (N, features) as a NumPy array."""
        return self._batched(self.body, x).astype(np.float64)

    def predict_proba(self, x):
        """Class probabilities softmax(logits) (N, K) as a NumPy array."""
        return ops.softmax(self.logits(x).astype(np.float64), -1)
