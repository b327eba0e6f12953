"""Command line: `python -m sparse_vdit demo`."""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("demo",):
        print("usage: python -m sparse_vdit demo [--device auto|cpu|cuda] [--comfyui PATH] [--out FILE.png] "
              "[--planted [--grid F,R,C] [--repeats N]]")
        return 2
    from .demo import main as demo_main

    return demo_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
