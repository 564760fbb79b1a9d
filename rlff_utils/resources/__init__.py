"""Data files shipped with the package (``ppdpp_ids.json``: PPDPP's evaluation split as ESConv ids)."""
