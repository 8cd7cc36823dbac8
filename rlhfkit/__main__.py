"""``python -m rlhfkit`` and the ``rlhfkit`` console script."""
import sys


def entry() -> None:
    from rlhfkit.allocator import reexec_with_fast_allocator

    reexec_with_fast_allocator(sys.argv[1:])
    from rlhfkit.cli import main

    sys.exit(main())


if __name__ == "__main__":
    entry()
