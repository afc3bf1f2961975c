"""Starts, prints, and crashes at once with exit code 3."""
import os
import sys

print(f"up {os.getpid()}, crashing", flush=True)
sys.exit(3)
