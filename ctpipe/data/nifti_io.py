"""Reading NIfTI files so that a damaged ``.nii.gz`` is noticed.

nibabel stops reading a gzip stream as soon as it has the voxels it needs, so a ``.nii.gz`` that lost its
last bytes (the gzip trailer: CRC-32 and length, 8 bytes) -- an interrupted copy, say -- loads as if it
were intact. :func:`read_nifti` reads the whole stream instead, which makes Python's gzip verify the CRC
and the length: such a file raises (``EOFError`` or ``gzip.BadGzipFile``) like any other truncated file.
One decompression, as before; the decompressed bytes are held in memory while the image is built.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib

# the image class by the header's first field, sizeof_hdr (NIfTI-1: 348, NIfTI-2: 540), in either byte order
_IMAGE_CLASSES: dict[int, type[nib.Nifti1Image]] = {348: nib.Nifti1Image, 540: nib.Nifti2Image}


class NotNiftiError(ValueError):
    """Decompressed bytes that do not start with a NIfTI-1 or NIfTI-2 header."""


def image_from_bytes(raw: bytes) -> nib.Nifti1Image:
    """A single-file NIfTI-1 or NIfTI-2 image from its (uncompressed) bytes."""
    if not raw:
        raise NotNiftiError("empty file (no bytes after decompression)")
    for byteorder in ("little", "big"):
        image_class = _IMAGE_CLASSES.get(int.from_bytes(raw[:4], byteorder))
        if image_class is not None:
            return image_class.from_bytes(raw)
    raise NotNiftiError(f"not a NIfTI-1/NIfTI-2 file: header size field {raw[:4]!r}, expected 348 or 540")


def read_nifti(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """``nib.load`` for ``.nii``; for ``.nii.gz`` the whole gzip stream is read and checked first.

    Raises whatever nibabel or gzip raise for a broken file (callers turn that into their skip reason).
    """
    path = Path(path)
    if not path.name.endswith(".gz"):
        return nib.load(str(path))
    with gzip.open(path, "rb") as handle:
        raw = handle.read()  # to the end of the stream: the CRC and the length are verified
    return image_from_bytes(raw)


# ---- plausible CT intensities ------------------------------------------------------------------------------
HU_MIN_SPAN = 100.0  # a CT in HU spans at least fat/air (< 0) to soft tissue; a normalised one spans ~1
HU_LIMITS = (-32768.0, 65535.0)  # what a CT's stored integers can hold


def hu_range_problem(low: float, high: float) -> str | None:
    """Why a volume whose values span ``[low, high]`` is not a CT in Hounsfield units (None if it may be).

    Refused: a span under 100 (a CT normalised to 0..1 or -1..1, or a mask), no value below 0 (no air or
    fat: stored values without the rescale intercept, or an 8-bit image), values beyond 16-bit storage.
    """
    expected = ("expected Hounsfield units: air about -1000, water 0, bone up to about 3000; convert the volume to "
                "HU (apply the scanner's rescale slope/intercept, undo any normalisation)")
    found = f"values span [{low:.4g}, {high:.4g}]"
    if high - low < HU_MIN_SPAN:
        return f"{found}, less than {HU_MIN_SPAN:g} HU: this looks normalised (e.g. 0..1), not HU; {expected}"
    if low >= 0.0:
        return f"{found}, nothing below 0 (no air or fat): this is not in HU; {expected}"
    if low < HU_LIMITS[0] or high > HU_LIMITS[1]:
        return f"{found}, beyond what a CT stores ({HU_LIMITS[0]:g}..{HU_LIMITS[1]:g}); {expected}"
    return None
