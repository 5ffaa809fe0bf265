"""Cost model: hardware and model catalogs, roofline timings calibrated on measured GPU profiles,
per-type capacity."""
