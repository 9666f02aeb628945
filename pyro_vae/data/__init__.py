"""Data: image sets as resident tensors (:mod:`~pyro_vae.data.images`)."""
