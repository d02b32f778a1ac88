"""Every input limit in one place, with the words used when one is hit.

`MediaLimits` bounds what one upload may be (file size, pixels, duration, frames); a conversation's bounds
are `pixelrefer.chat.limits.ChatLimits`, beside the chat. The app's values live in
`pixelrefer.serve.service.AppSettings`, which holds one of each; the README's "Limits" table states them and a
test keeps the two in step. Every check runs before anything is decoded or computed, and every refusal names
the limit, the value that broke it and by how much, so a visitor can fix the input rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import InputError

__all__ = ["LimitExceeded", "MediaLimits", "MediaRejected", "fit_within", "pixel_refusal"]


class MediaRejected(InputError):
    """The upload breaks a limit that trimming cannot fix, or is not a usable clip; the message says why."""


class LimitExceeded(InputError):
    """A request goes over a configured limit; the message names the limit, the request's value and the excess."""


def pixel_refusal(subject: str, width: int, height: int, limit: int) -> str | None:
    """The message refusing width x height over `limit` pixels, or None if it fits.

    `subject` carries its verb: "cat.png is", "The frames of clip.mp4 are".
    """
    pixels = int(width) * int(height)
    if pixels <= limit:
        return None
    return (
        f"{subject} {width}x{height} = {pixels:,} pixels; the limit is {limit:,} pixels "
        f"({pixels / limit:.1f}x too many). Use a smaller picture."
    )


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) of a picture shrunk so its longer side fits `max_side`: the one shrinking rule.

    Images and clip frames are shrunk alike, so a mask drawn on the original follows its picture exactly
    (`pixelrefer.media.masks.fit_mask`). Sides are rounded to the nearest even number (video encoders and
    the scaler want even sides), never above `max_side` and never below 2 px unless already smaller (the full
    model crops up to, not including, the last row and column, so a 1-px side has no object); a picture
    that fits is kept.

    """
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    ceiling = max(2, max_side // 2 * 2)

    def side(length: int) -> int:
        return min(length, max(2, min(ceiling, 2 * round(length * scale / 2))))

    return side(width), side(height)


@dataclass(frozen=True)
class MediaLimits:
    """What one upload may be. Clips longer than `max_duration_s` keep their start; larger frames are shrunk.

    `max_pixels` bounds an image, or one frame of a clip, as its header declares it: anything larger is
    refused before a byte of pixel data is decoded (PIL's own decompression-bomb check only fires far later).
    Listing a clip's frames (before the duration cap applies) stops after `max_scan_packets` packets or
    `max_scan_s` seconds, so a file of millions of tiny packets costs a bounded scan, not the whole file.
    """

    max_upload_mb: float = 200.0
    max_duration_s: float = 180.0
    max_side: int = 1920
    max_frames: int = 768
    max_pixels: int = 50_000_000
    max_scan_packets: int = 30_000
    max_scan_s: float = 10.0

    def describe(self) -> str:
        """One line for the UI, next to the upload box."""
        return (
            f"Up to {self.max_upload_mb:g} MB and {self.max_pixels / 1e6:g} megapixels; clips are cut to the "
            f"first {self.max_duration_s:g} s; frames larger than {self.max_side}px on a side are shrunk; "
            f"at most {self.max_frames} frames are used."
        )

    def check_upload_size(self, n_bytes: int, name: str) -> None:
        """Refuse a file over the upload size before anything reads it."""
        megabytes = n_bytes / 1e6
        if megabytes > self.max_upload_mb:
            raise MediaRejected(
                f"{name} is {megabytes:.1f} MB; the limit is {self.max_upload_mb:g} MB. "
                "Upload a smaller or more compressed file."
            )

    def check_pixels(self, width: int, height: int, subject: str) -> None:
        """Refuse an image (or a clip whose frames are) larger than `max_pixels`, from its declared size.

        `subject` carries its verb, as in `pixel_refusal`.
        """
        message = pixel_refusal(subject, width, height, self.max_pixels)
        if message:
            raise MediaRejected(message)

    def fit_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image or clip frame is kept at: `fit_within` this limit's `max_side`."""
        return fit_within(width, height, self.max_side)
