"""Errors raised by the speech engine.

    EngineError
     +-- AudioFormatError    the audio cannot be read as declared (encoding, rate, odd length)
     +-- UnknownModelError   a model name that is neither registered nor a model directory
     +-- StreamClosedError   audio sent to a stream after `finish()` or `aclose()`
"""


class EngineError(Exception):
    """Base class for speech-engine errors."""


class AudioFormatError(EngineError):
    """Audio that does not match its declared format; the message says what is wrong."""


class UnknownModelError(EngineError):
    """A model name that the registry does not know and that is not a model directory."""


class StreamClosedError(EngineError):
    """Audio sent to a stream after `finish()` or `aclose()`: the call is over or ending."""
