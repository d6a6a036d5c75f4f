"""Readers of the official dataset formats (CIFAR python tarballs, ImageNet-2012)."""
