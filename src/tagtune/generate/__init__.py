"""Generate: txt2img with the SDXL pipeline (`tagtune generate`).

- `pipeline`: `load_for_generation`, `generate`, `params_from_png`, `build_pipeline`.
- `samplers`: the A1111 sampler names and their diffusers schedulers.
- `prompt_parser`: `parse_prompt`, A1111 emphasis syntax.
- `infotext`: the A1111 parameters text in each PNG (`write_png`, `read_png_infotext`).
"""
