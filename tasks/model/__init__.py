"""The models and their training: custom layers, architectures, recipe, the training loop, progress, epoch log."""
