"""Console output of study workers, which share one terminal."""
import sys


def say(line, file=None):
    """Print ``line`` in one write. ``print`` writes the newline apart, and where Python runs unbuffered
    (``PYTHONUNBUFFERED``, ``python -u``) another worker's line could land between the two."""
    file = sys.stdout if file is None else file
    file.write(f"{line}\n")
    file.flush()
