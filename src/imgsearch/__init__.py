"""imgsearch: find images without metadata by words, by example and by feedback."""

__version__ = "0.1.0"
