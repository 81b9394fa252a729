"""Set prediction with slot attention and DSPN/iDSPN (see app.py and docs/set_prediction.md)."""

from .app import APP

__all__ = ["APP"]
