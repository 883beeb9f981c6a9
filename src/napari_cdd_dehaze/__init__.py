"""napari-cdd-dehaze: unpaired image restoration (CDD-GAN) as a napari plugin and a GUI-free library.

The package root imports nothing heavy; import the modules you need (``config``, ``trainer``,
``restore``, ``checkpoint`` ...). No module outside the widget shells imports napari or Qt.
"""
__version__ = "0.1.0"
