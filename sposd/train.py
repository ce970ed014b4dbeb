"""`sposd train`'s entry point, kept at its historical place: the loop lives in `sposd.loop`."""

from sposd.errors import UserError
from sposd.loop.train import train

__all__ = ["UserError", "train"]
