"""cxrfm: chest X-ray foundation models.

Layers follow the data (checked by import-linter, see pyproject.toml):
``io`` (pixels from files) -> ``data`` (samples, datasets, the phantom) -> ``anatomy``
(lung/chest contours) -> ``models`` -> ``training`` -> ``cli``. ``evaluation`` holds metrics that
take predictions and references and never import models.

Pixel convention for the whole toolkit: single channel, ``float32`` in ``[0, 1]``, ``0`` = black
(air as displayed on a radiograph), ``1`` = white (bone / metal). Arrays are ``(H, W)``; tensors
``(1, H, W)`` per image and ``(B, 1, H, W)`` per batch. Sizes are always ``(H, W)`` tuples.
"""

__version__ = "0.1.0"
