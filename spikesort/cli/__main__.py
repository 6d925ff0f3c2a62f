"""``python -m spikesort.cli``: the same as the ``spikesort`` command."""

from . import main

if __name__ == "__main__":
    main()
