"""Reading and writing users' files: images of every dtype and layout, and the intensity map between them."""
