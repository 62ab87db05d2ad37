"""``python -m tokcal ...``: the ``tokcal`` command; also what ``torchrun -m tokcal collect ...`` runs."""

from tokcal.cli import main

if __name__ == "__main__":
    main()
