"""Style-intervention engines. ``get_engine(name, **settings)`` returns a loaded engine."""

from styleswap.generator.engines.base import ENGINES, Copy, CopyRequest, Engine, get_engine, register

__all__ = ["ENGINES", "Copy", "CopyRequest", "Engine", "get_engine", "register"]
