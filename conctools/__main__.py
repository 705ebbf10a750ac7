"""``python -m conctools``: the same as the ``conctools`` command."""

from conctools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
