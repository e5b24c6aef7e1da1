"""Preference data: formats, validation, tokenization."""

from .records import Message, PreferenceRecord, Text

__all__ = ["Message", "PreferenceRecord", "Text"]
