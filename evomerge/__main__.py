"""``python -m evomerge``: same as the ``evomerge`` console script."""

from evomerge.cli import main

main()
