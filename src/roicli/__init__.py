"""roicli: RoI Align, RoI Pool and exact RoI pooling, with the quantization error made visible.

The Python API (`roicli.pool`, `compare`, `show`, `batch`, `load_features`, `load_rois`; see
`roicli.api`) is imported on first use, so that `import roicli` (and the CLI's `--help`) stays light.
"""

__version__ = "0.1.0"

__all__ = ["batch", "compare", "load_features", "load_rois", "pool", "show"]


def __getattr__(name: str):
    if name in __all__:
        from roicli import api

        return getattr(api, name)
    raise AttributeError(f"module 'roicli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
