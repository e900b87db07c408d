"""The Textual UI. It sees and commands the engine only through ``EngineClient``."""

from lmtui.tui.app import LmtuiApp, build_app

__all__ = ["LmtuiApp", "build_app"]
