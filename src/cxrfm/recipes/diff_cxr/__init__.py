"""Diff-CXR (shared/papers/003): report -> chest X-ray latent diffusion, one recipe in stages."""
