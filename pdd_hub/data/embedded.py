"""The embedded offline default: scikit-learn's bundled 8x8 handwritten digits as a ``DatasetDict``.

It needs no network, so the quickstart and the tests run anywhere. It goes through the same
``datasets`` code path (an ``Image`` column and a ``ClassLabel`` column) as any Hub dataset.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def digits_dataset_dict():
    """1,797 grey 8x8 digits: every fifth example is ``test`` (360), the rest ``train`` (1,437)."""
    import datasets
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; spread them over the uint8 range a PNG holds.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    is_test = np.arange(len(labels)) % 5 == 0
    splits = {}
    for name, mask in (("train", ~is_test), ("test", is_test)):
        ds = datasets.Dataset.from_dict(
            {"image": list(images[mask]), "label": labels[mask].tolist()}, features=features
        )
        # In-memory datasets get random fingerprints; a content hash lets the decode cache work.
        ds._fingerprint = f"sklearn-digits-{name}-{_content_hash(images[mask], labels[mask])}"
        splits[name] = ds
    return datasets.DatasetDict(splits)


def _content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.tobytes())
    return digest.hexdigest()[:16]
