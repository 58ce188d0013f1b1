"""Diff-CXR's networks (shared/papers/003): the KL autoencoder, the text encoder with its information
squeeze, the U-ViT denoiser and the disease-knowledge adapter, plus LNFS's latent networks. They take
tensors and return tensors; the data, the schedulers' loops and the run folders live above them.
CXR-IRGen (004) reuses the same parts."""
