"""Exceptions that specdec raises for problems a user or a plugin author can fix.

Every message says what is wrong and, where it can, how to fix it. The CLI prints these without
a traceback; anything else escaping is a bug in specdec.
"""


class SpecdecError(Exception):
    """Base class of every error specdec raises on purpose."""


class DraftError(SpecdecError, ValueError):
    """A drafter produced a draft that cannot be verified (bad tree, bad token ids, bad q)."""


class InputError(SpecdecError, ValueError):
    """The request itself is unusable: empty prompt, prompt longer than the context, ..."""


class ModelMismatchError(SpecdecError, ValueError):
    """Two models (or a model and a resource built for another one) do not fit together."""


class ConfigError(SpecdecError, ValueError):
    """A pipeline configuration is invalid; the message names the place in the file."""


class PluginError(SpecdecError):
    """A plugin failed to load or to register its components."""


class GenerationError(SpecdecError, RuntimeError):
    """A component (drafter, policy, model) failed while generating one request; the request
    fails alone and the cause is chained (`__cause__`)."""
