"""Prepare: buckets and the latent cache (`tagtune prepare WS`).

- `run`: `plan_workspace(ws)`, `prepare_workspace(ws)`, `bucket_chart(ws)`.
- `buckets`: aspect-ratio buckets and the crop of each image.
- `encode`: `encode_images`, the VAE encoding loop (`vae_fingerprint` names the VAE).
- `latent_cache`: `open_latent_cache`, shards of latents keyed by VAE.
- `latent_images`: decoding and cropping images in worker processes.
"""
