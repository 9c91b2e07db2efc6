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
        return _within(count, "image count", self.max_images, "images", "--max-images")

    def steps(self, steps) -> int:
        """``steps`` as an int in 1..max_steps."""
        return _within(steps, "steps", self.max_steps, "ODE steps", "--max-steps")

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


def _within(value, name: str, cap: int, unit: str, flag: str) -> int:
    """``value`` as an int in 1..cap, else a one-line UserError naming the flag that sets the cap."""
    value = _whole(value, name)
    if value < 1:
        raise UserError(f"{name} must be at least 1, got {value}")
    if value > cap:
        raise UserError(f"{name} {value} is over the cap of {cap} {unit} per request "
                        f"(start jit studio with {flag} to change it)")  # fmt: skip
    return value
