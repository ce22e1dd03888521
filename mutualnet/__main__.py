"""``python -m mutualnet ...`` runs the ``mutualnet`` command."""

from mutualnet.cli import main

if __name__ == "__main__":
    main()
