"""Reading, writing and building SDXL models (single-file and diffusers layouts)."""
