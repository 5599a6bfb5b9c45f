"""Classical baseline segmenter: a random forest on multiscale pixel features.

>>> seg = ForestSegmenter().fit([recon_a, recon_b], [labels_a, labels_b])   # doctest: +SKIP
>>> probabilities = seg.predict_proba(recon_c)      # (4, H, W), sums to 1  # doctest: +SKIP
>>> seg.save("forest.joblib"); ForestSegmenter.load("forest.joblib")       # doctest: +SKIP

Saved models are joblib (pickle) files: loading one can execute arbitrary code, so only load
files you wrote yourself or otherwise trust.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from synaps_agent.segment.features import check_image, image_features

__all__ = ["ForestSegmenter"]

_FORMAT = "synaps-forest-segmenter"
_FORMAT_VERSION = 1


class ForestSegmenter:
    """Random-forest pixel classifier on :func:`~synaps_agent.segment.features.image_features`.

    Parameters
    ----------
    num_classes : int
        Number of phase labels (4: pore, carbon-binder, active, secondary).
    n_estimators, max_depth, min_samples_leaf, n_jobs
        Passed to :class:`sklearn.ensemble.RandomForestClassifier`.
    sigma_min, sigma_max, num_sigma
        Feature scales, passed to :func:`~synaps_agent.segment.features.image_features`.

    Notes
    -----
    The features use absolute grey values: train and predict on images in the same frame
    (global phase offset and ramp removed, same amplitude normalisation).
    """

    def __init__(
        self,
        num_classes: int = 4,
        *,
        n_estimators: int = 50,
        max_depth: int | None = 12,
        min_samples_leaf: int = 2,
        n_jobs: int = 2,
        sigma_min: float = 1.0,
        sigma_max: float = 8.0,
        num_sigma: int = 4,
    ) -> None:
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.n_estimators = int(n_estimators)
        self.max_depth = max_depth
        self.min_samples_leaf = int(min_samples_leaf)
        self.n_jobs = int(n_jobs)
        self.feature_params: dict[str, Any] = dict(
            sigma_min=float(sigma_min), sigma_max=float(sigma_max), num_sigma=int(num_sigma)
        )
        self.forest_: Any = None
        self.n_features_: int | None = None
        self.is_complex_: bool | None = None

    # ------------------------------------------------------------------ helpers

    def features(self, image: ArrayLike) -> NDArray[np.float32]:
        """Per-pixel features ``(*shape, n_features)`` with this segmenter's scales."""
        return image_features(image, **self.feature_params)

    def _check_fitted(self) -> None:
        if self.forest_ is None:
            raise RuntimeError("ForestSegmenter is not fitted; call fit() or load() first")

    def _check_labels(self, labels: ArrayLike, shape: tuple[int, ...], i: int) -> NDArray:
        lab = np.asarray(labels)
        if lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels[{i}] must be an integer array, got dtype {lab.dtype}")
        if lab.shape != shape:
            raise ValueError(f"labels[{i}] shape {lab.shape} does not match image shape {shape}")
        if lab.min() < 0 or lab.max() >= self.num_classes:
            raise ValueError(
                f"labels[{i}] holds values in [{lab.min()}, {lab.max()}], "
                f"outside 0..{self.num_classes - 1}"
            )
        return lab

    # ------------------------------------------------------------------ API

    def fit(
        self,
        images: Sequence[ArrayLike],
        labels: Sequence[ArrayLike],
        max_pixels_per_image: int = 20000,
        seed: int = 0,
    ) -> ForestSegmenter:
        """Train on images with their ground-truth label maps.

        Parameters
        ----------
        images : sequence of array_like
            2D (or 3D) images, all complex or all real (see
            :func:`~synaps_agent.segment.features.image_features`).
        labels : sequence of array_like of int
            Label map of each image, same shape, values in ``0..num_classes-1``.
        max_pixels_per_image : int
            At most this many pixels are drawn at random (class-stratified proportionally,
            i.e. uniformly) from each image.
        seed : int
            Seed of the pixel sampling and of the forest.

        Returns
        -------
        ForestSegmenter
            ``self``.
        """
        from sklearn.ensemble import RandomForestClassifier

        if isinstance(images, np.ndarray) or isinstance(labels, np.ndarray):
            raise ValueError("images and labels must be lists of arrays (one entry per image)")
        images, labels = list(images), list(labels)
        if not images:
            raise ValueError("no training images")
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} label maps")
        if int(max_pixels_per_image) < 1:
            raise ValueError("max_pixels_per_image must be >= 1")
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        kinds = set()
        for i, (image, lab) in enumerate(zip(images, labels, strict=True)):
            img = check_image(image, f"images[{i}]")
            kinds.add(bool(np.iscomplexobj(img)))
            lab = self._check_labels(lab, img.shape, i)
            feats = self.features(img).reshape(lab.size, -1)
            n = min(int(max_pixels_per_image), lab.size)
            idx = rng.choice(lab.size, size=n, replace=False)
            xs.append(feats[idx])
            ys.append(lab.reshape(-1)[idx])
        if len(kinds) > 1:
            raise ValueError("images must be all complex or all real")
        x, y = np.concatenate(xs), np.concatenate(ys)
        forest = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            n_jobs=self.n_jobs,
            random_state=int(seed),
        )
        forest.fit(x, y)
        self.forest_ = forest
        self.n_features_ = int(x.shape[1])
        self.is_complex_ = kinds.pop()
        return self

    def predict_proba(self, image: ArrayLike) -> NDArray[np.float32]:
        """Class probabilities, ``(num_classes, *shape)`` float32, summing to 1 per pixel.

        Classes never seen in training get probability 0.
        """
        self._check_fitted()
        img = check_image(image)
        if bool(np.iscomplexobj(img)) != self.is_complex_:
            kind = "complex" if self.is_complex_ else "real"
            raise ValueError(f"the segmenter was trained on {kind} images")
        feats = self.features(img).reshape(-1, self.n_features_ or 0)
        if feats.shape[1] != self.n_features_:
            raise ValueError(
                f"image gives {feats.shape[1]} features, the forest expects {self.n_features_}"
            )
        proba = self.forest_.predict_proba(feats)
        out = np.zeros((self.num_classes, feats.shape[0]), np.float32)
        out[np.asarray(self.forest_.classes_, dtype=np.intp)] = proba.T
        out /= out.sum(axis=0, keepdims=True)
        return out.reshape((self.num_classes, *img.shape))

    def predict(self, image: ArrayLike) -> NDArray[np.int8]:
        """Most probable label per pixel (int8, shape of ``image``)."""
        return self.predict_proba(image).argmax(axis=0).astype(np.int8)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted segmenter to a joblib file."""
        import joblib

        self._check_fitted()
        state = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "num_classes": self.num_classes,
            "params": dict(
                n_estimators=self.n_estimators,
                max_depth=self.max_depth,
                min_samples_leaf=self.min_samples_leaf,
                n_jobs=self.n_jobs,
                **self.feature_params,
            ),
            "forest": self.forest_,
            "n_features": self.n_features_,
            "is_complex": self.is_complex_,
        }
        joblib.dump(state, os.fspath(path), compress=3)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ForestSegmenter:
        """Read a segmenter written by :meth:`save`.

        Warning: this unpickles the file, which can run arbitrary code. Only load files
        you trust (written by this package on your own machine).
        """
        import joblib

        state = joblib.load(os.fspath(path))
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a ForestSegmenter file")
        if state.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} has unsupported format version {state.get('version')}")
        seg = cls(state["num_classes"], **state["params"])
        seg.forest_ = state["forest"]
        seg.n_features_ = state["n_features"]
        seg.is_complex_ = state["is_complex"]
        return seg
