"""Input limits for uploaded media, and the words used when one is hit.

The app shows these numbers next to the upload box, and the readers enforce them before decoding, so a
visitor learns what was kept (or why nothing was) in the same terms everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MediaLimits", "MediaRejected"]


class MediaRejected(ValueError):
    """The upload breaks a limit that trimming cannot fix; the message says which and by how much."""


@dataclass(frozen=True)
class MediaLimits:
    """What one upload may be. Clips longer than `max_duration_s` keep their start; larger frames are shrunk."""

    max_upload_mb: float = 200.0
    max_duration_s: float = 180.0
    max_side: int = 1920
    max_frames: int = 768

    def describe(self) -> str:
        """One line for the UI."""
        return (
            f"Up to {self.max_upload_mb:g} MB; clips are cut to the first {self.max_duration_s:g} s; "
            f"frames larger than {self.max_side}px on a side are shrunk; at most {self.max_frames} frames are used."
        )

    def check_upload_size(self, n_bytes: int, name: str) -> None:
        """Refuse a file over the upload size before anything reads it."""
        megabytes = n_bytes / 1e6
        if megabytes > self.max_upload_mb:
            raise MediaRejected(
                f"{name} is {megabytes:.1f} MB; the limit is {self.max_upload_mb:g} MB. "
                "Upload a shorter or more compressed clip."
            )

    def fit_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) frames are decoded at: the original, or shrunk so the longer side fits (even sides)."""
        longest = max(width, height)
        if longest <= self.max_side:
            return width, height
        scale = self.max_side / longest
        return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
