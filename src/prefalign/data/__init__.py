"""Preference data: formats, validation, tokenization."""

from .loading import PreferenceData, load_preferences, save_preferences
from .records import Message, PreferenceRecord, Text
from .validation import Reason, Rejection, ValidationReport

__all__ = [
    "Message",
    "PreferenceData",
    "PreferenceRecord",
    "Reason",
    "Rejection",
    "Text",
    "ValidationReport",
    "load_preferences",
    "save_preferences",
]
