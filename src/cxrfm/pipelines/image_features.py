"""Images -> feature arrays for the image-generation metrics (:mod:`cxrfm.evaluation.image_generation`).

Every extractor takes images ``(N, 1, H, W)`` in ``[0, 1]`` (the toolkit's pixel convention), as
one tensor or an iterable of batches, and returns a float64 NumPy array ``(N, D)``; it runs in
eval mode under ``no_grad``, in batches with a progress bar. Each has a ``name`` that says which
network made the space, for ``FD-<name>`` in tables.

* :class:`EncoderFeatures`: a cxrfm ViT encoder folder (MAE pretraining's ``<run>/encoder``, or a
  whole MAE folder) -> the mean over patch tokens of the last block's (normalised) output, ``D =
  embed_dim``. Mean pooling, not the class token: MAE's objective never trains the class token
  (the loss is on patch reconstructions), and MAE itself uses global average pooling downstream.
* :class:`InceptionFeatures`: a TorchScript Inception-v3 file the user supplies (NVlabs'
  ``inception-2015-12-05.pt`` of StyleGAN3 / clean-fid) -> the 2048 pool features, the space of
  FID. Nothing is ever downloaded.
* :class:`ClassifierProbabilities`: a saved cxrfm classifier folder -> ``(N, K)`` probabilities
  (for mAUC and controllability), through :class:`~cxrfm.pipelines.classification.ClassificationPipeline`.

Images whose size differs from a network's input are resized with the datasets' own convention
(:func:`cxrfm.io.resize_image`, aspect kept and padded with black, area / antialiased bilinear);
give real and generated images the same treatment so their features are comparable.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrfm.errors import CheckpointError
from cxrfm.io.image import resize_image
from cxrfm.models.vit import VisionTransformer, build_encoder
from cxrfm.pipelines.classification import ClassificationPipeline
from cxrfm.utils.runtime import resolve_device

log = logging.getLogger(__name__)

INCEPTION_SIZE = (299, 299)
Images = torch.Tensor | Iterable[torch.Tensor]


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1 or not images.dtype.is_floating_point:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected float images (B, 1, H, W) in [0, 1], got {shape}")
    return images


def _batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """``(N, 1, H, W)`` split into ``batch_size`` chunks, or the batches of an iterable as they come
    (tensors, or batches with an ``images`` attribute such as ``collate_samples`` output)."""
    if isinstance(images, torch.Tensor):
        _check_images(images)
        yield from images.split(batch_size)
        return
    for batch in images:
        yield _check_images(getattr(batch, "images", batch))


def _total_batches(images: Images, batch_size: int) -> int | None:
    if isinstance(images, torch.Tensor):
        return -(-images.shape[0] // batch_size)
    try:
        return len(images)  # type: ignore[arg-type]
    except TypeError:
        return None


class _BatchedExtractor:
    """The shared loop: ``__call__`` batches, shows progress and stacks ``forward_batch`` outputs."""

    name: str = "features"
    device: torch.device

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` on :attr:`device` -> ``(B, D)``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: Images, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """``images (N, 1, H, W)`` in [0, 1] (one tensor or an iterable of batches) -> ``(N, D)`` float64."""
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        outputs = []
        total = _total_batches(images, int(batch_size))
        for batch in tqdm(_batches(images, int(batch_size)), total=total, desc=self.name, disable=not progress, dynamic_ncols=True):
            features = self.forward_batch(batch.to(self.device))
            if features.ndim != 2 or features.shape[0] != batch.shape[0]:
                raise ValueError(f"{self.name} returned shape {tuple(features.shape)} for {batch.shape[0]} images; expected (B, D)")
            outputs.append(features.detach().cpu().to(torch.float64))
        if not outputs:
            raise ValueError("no images")
        return torch.cat(outputs).numpy()


def _fit(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``images`` at ``size`` ``(H, W)``: unchanged when they are already, else resized as the datasets do."""
    return images if tuple(images.shape[-2:]) == tuple(size) else resize_image(images, tuple(size))


def _space_label(directory: Path) -> str:
    """The folder's name, with its parent's when the name alone is the generic ``encoder``."""
    directory = directory.expanduser().resolve()
    return f"{directory.parent.name}/{directory.name}" if directory.name == "encoder" and directory.parent.name else directory.name


# --------------------------------------------------------------------------- cxrfm encoder
class EncoderFeatures(_BatchedExtractor):
    """Mean-pooled patch tokens of a cxrfm ViT encoder: ``(B, 1, H, W) -> (B, embed_dim)``.

    The tokens are the encoder's output (last block, then its final LayerNorm); prefix (class)
    tokens are left out of the mean.
    """

    def __init__(self, encoder: VisionTransformer, name: str = "cxrfm-vit", device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.encoder = encoder.eval().to(self.device)
        self.name = name

    @classmethod
    def from_pretrained(
        cls, encoder_dir: str | Path, image_size: tuple[int, int] | None = None, device: str | torch.device = "auto"
    ) -> EncoderFeatures:
        """Load an encoder (or MAE) folder with the toolkit's :func:`~cxrfm.models.vit.build_encoder`.

        ``image_size``: ``(H, W)`` to run the encoder at (position embeddings resampled); None
        keeps the saved size. The ``name`` is ``"cxrfm-vit (<folder>)"``.
        """
        encoder = build_encoder(encoder_dir, image_size=image_size)
        return cls(encoder, f"cxrfm-vit ({_space_label(Path(encoder_dir))})", device)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.encoder.config.image_size)

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(_fit(images, self.image_size))  # (B, P + N, D)
        return tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)  # (B, D)


# ------------------------------------------------------------------------------- Inception
class InceptionFeatures(_BatchedExtractor):
    """Pool features of a user-supplied TorchScript Inception-v3: ``(B, 1, H, W) -> (B, 2048)``.

    The file is one such as NVlabs' ``inception-2015-12-05.pt`` (StyleGAN3, clean-fid): loaded with
    ``torch.jit.load`` and called as ``model(images, return_features=True)`` on ``(B, 3, 299, 299)``
    uint8 images. Grey images are resized to 299 × 299 in float (as :func:`_fit`), quantised to
    ``round(255 · clamp(x, 0, 1))`` and repeated to three channels. cxrfm never downloads it.
    """

    def __init__(self, weights_path: str | Path, device: str | torch.device = "auto"):
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                path,
                "no such file: the Inception features need a TorchScript Inception-v3 supplied by the user "
                "(e.g. NVlabs' inception-2015-12-05.pt); cxrfm never downloads it",
            )
        self.device = resolve_device(device)
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; these files are TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(path, f"is not a TorchScript file (torch.jit.load: {first_line[:200]})") from None
        self.weights_path = path
        self.name = f"inception ({path.name})"

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:
        resized = _fit(images.float(), INCEPTION_SIZE)  # (B, 1, 299, 299)
        quantised = (resized.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.model(quantised.expand(-1, 3, -1, -1).contiguous(), return_features=True)  # (B, 2048)


# ------------------------------------------------------------------------------ classifier
class ClassifierProbabilities(_BatchedExtractor):
    """A saved cxrfm classifier on generated images: ``(B, 1, H, W) -> (B, K)`` probabilities.

    Loading and the forward pass are :class:`ClassificationPipeline`'s; :attr:`label_names` gives
    the K columns, in order.
    """

    def __init__(self, pipeline: ClassificationPipeline):
        self.pipeline = pipeline
        self.device = pipeline.device
        self.name = "classifier" if pipeline.model_dir is None else f"classifier ({_space_label(pipeline.model_dir)})"

    @classmethod
    def from_pretrained(cls, classifier_dir: str | Path, device: str | torch.device = "auto") -> ClassifierProbabilities:
        """Load a ``cxrfm classify train`` model folder (``config.json`` + weights + ``thresholds.json``)."""
        return cls(ClassificationPipeline.from_pretrained(classifier_dir, device))

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.pipeline.label_names

    @property
    def image_size(self) -> tuple[int, int]:
        return self.pipeline.image_size

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.pipeline(_fit(images, self.image_size)).probabilities)


__all__ = ["ClassifierProbabilities", "EncoderFeatures", "InceptionFeatures"]
