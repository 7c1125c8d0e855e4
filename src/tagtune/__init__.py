"""tagtune: a Danbooru-style image collection in, a fine-tuned SDXL checkpoint out."""

__version__ = "0.1.0"
