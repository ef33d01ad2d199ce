"""``python -m deepmac`` runs the command-line interface."""

from deepmac.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
