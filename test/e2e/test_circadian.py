#!/usr/bin/env python3
"""End-to-end tests of the circadian plugin (being written)."""
import sys
print("skip: not written yet")
sys.exit(77)
