"""The plugin's settings, read and written by the widgets (napari ≥ 0.9 plugin settings).

The manifest declares them (``contributions.configurations`` in ``napari.yaml``): ``defaults`` (device, tile
size, precision, the folder where models live) and ``last_used`` (the last model, training folders and minutes).
napari keeps them in its configuration folder as ``napari-cdd-dehaze.yaml``, saves every change at once and
lists them under Preferences. Where plugin settings are unavailable (an older napari, or the plugin not
registered with npe2) the widgets start from their built-in defaults and remember nothing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

PLUGIN = "napari-cdd-dehaze"


def plugin_settings():
    """This plugin's settings object (``.defaults``, ``.last_used``), or None where napari has none."""
    try:
        from napari.settings import get_plugin_settings

        return get_plugin_settings(PLUGIN)
    except Exception as exc:  # ImportError (napari < 0.9), KeyError (plugin not registered), a broken file
        logging.getLogger(__name__).debug("no plugin settings: %s", exc)
        return None


def setting(section: str, name: str, fallback: Any) -> Any:
    """The stored value of ``section.name``, or ``fallback`` without settings."""
    settings = plugin_settings()
    return fallback if settings is None else getattr(getattr(settings, section), name, fallback)


def remember(section: str, name: str, value: Any) -> None:
    """Store ``value`` as ``section.name`` (saved at once); a value the settings refuse is not stored."""
    settings = plugin_settings()
    if settings is None:
        return
    try:
        setattr(getattr(settings, section), name, value)
    except (ValueError, TypeError) as exc:  # pydantic's validation error is a ValueError
        logging.getLogger(__name__).debug("setting %s.%s not stored: %s", section, name, exc)


def reset_settings() -> None:
    """Every setting back to the manifest's default."""
    settings = plugin_settings()
    if settings is not None:
        settings.defaults.reset()
        settings.last_used.reset()


def models_in_folder(folder: str | Path) -> list[Path]:
    """Run folders (holding ``restorer.safetensors``) and ``.safetensors`` files directly in ``folder``."""
    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir():
        return []
    found = [p for p in sorted(folder.iterdir()) if (p / "restorer.safetensors").is_file()]
    return found + sorted(p for p in folder.glob("*.safetensors") if p.is_file())
