"""The studio's caps: images per request, ODE steps and upload size, checked before any work is done."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.errors import UserError

DEFAULT_MAX_IMAGES = 64
DEFAULT_MAX_STEPS = 250
DEFAULT_MAX_UPLOAD_MB = 10.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every check raises :class:`UserError` with a one-line message that
    names the field, the value, the cap and the flag that changes it."""

    max_images: int = DEFAULT_MAX_IMAGES
    max_steps: int = DEFAULT_MAX_STEPS
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB

    def __post_init__(self):
        if self.max_images < 1 or self.max_steps < 1 or not self.max_upload_mb > 0:
            raise UserError(f"studio caps must be positive: --max-images {self.max_images}, "
                            f"--max-steps {self.max_steps}, --max-upload-mb {self.max_upload_mb}")  # fmt: skip

    def images(self, count) -> int:
        """``count`` as an int in 1..max_images."""
        count = _whole(count, "image count")
        if count < 1:
            raise UserError(f"image count must be at least 1, got {count}")
        if count > self.max_images:
            raise UserError(f"image count {count} is over the cap of {self.max_images} images per request "
                            "(start jit studio with --max-images to change it)")  # fmt: skip
        return count

    def steps(self, steps) -> int:
        """``steps`` as an int in 1..max_steps."""
        steps = _whole(steps, "steps")
        if steps < 1:
            raise UserError(f"steps must be at least 1, got {steps}")
        if steps > self.max_steps:
            raise UserError(f"steps {steps} is over the cap of {self.max_steps} ODE steps per request "
                            "(start jit studio with --max-steps to change it)")  # fmt: skip
        return steps

    def upload(self, nbytes: int, name: str = "upload") -> None:
        """Refuse a file of more than max_upload_mb megabytes."""
        if nbytes > self.max_upload_bytes:
            raise UserError(f"{name} is {nbytes / 1e6:.3g} MB, over the cap of {self.max_upload_mb:g} MB "
                            "(start jit studio with --max-upload-mb to change it)")  # fmt: skip

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


def _whole(value, field: str) -> int:
    """A whole number from a form field (an int, or a float or text without a fraction)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{field} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{field} must be a whole number, got {value!r}")
    return int(number)
