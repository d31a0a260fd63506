"""The demo (``mol demo``): the zoo's experts merged and fused, compared on held-out text."""

from mol.demo.merges import demo_merges
from mol.demo.run import run_demo
from mol.demo.table import DemoRow, format_table

__all__ = ["DemoRow", "demo_merges", "format_table", "run_demo"]
