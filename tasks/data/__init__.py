"""The data: reading the CIFAR-10 archive, making and loading the prepared splits, and validating them."""
