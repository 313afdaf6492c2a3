"""The export's error, in a module without torch: `mla calibrate` raises it on a serve-only install."""

from __future__ import annotations


class ExportError(Exception):
    """A model that cannot be exported (or calibrated) as asked."""
