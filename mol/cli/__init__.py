"""Command-line front ends (``mol``, ``mol-merge``): thin layers over the Python API."""
