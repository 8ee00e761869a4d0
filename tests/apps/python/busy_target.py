#!/usr/bin/env python3
"""A target that never sleeps nor blocks: a pure-Python loop holding the GIL, which lists
ARGV[1] every 200,000 iterations. Prints "ready" once running."""

import os
import sys

path = sys.argv[1]
print("ready", flush=True)
n = 0
while True:
    n += 1
    if n % 200000 == 0:
        os.listdir(path)
