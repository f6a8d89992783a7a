"""The error every stage raises for a bad config, in a module of its own (no imports), so that
the stages the config module itself calls (``data.source``) raise it without importing
``config``."""


class ConfigError(ValueError):
    """The config is invalid; the message names the file (when known), the key and the value."""
