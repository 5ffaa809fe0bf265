"""Shipped data: catalogs (YAML), calibration and bundled traces."""
