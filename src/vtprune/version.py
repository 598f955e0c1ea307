"""The package version, on the lowest floor so that any module may stamp it into what it writes."""

__version__ = "0.1.0"
