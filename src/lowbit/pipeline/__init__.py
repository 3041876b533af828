"""Whole models: which layers get which scheme, and the driver that quantizes them."""
