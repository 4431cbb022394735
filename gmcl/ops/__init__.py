"""Numerical building blocks below the layers: convolutions with a per-direction implementation."""
