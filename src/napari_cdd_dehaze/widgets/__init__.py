"""The napari widgets: thin shells that turn user input into core calls run in worker threads.

napari is imported lazily (or under ``TYPE_CHECKING``) so that importing the package starts no GUI.
"""
from .restore_widget import RestoreWidget
from .train_widget import TrainWidget

__all__ = ["RestoreWidget", "TrainWidget"]
