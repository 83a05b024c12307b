"""The controller's schema migrations (Alembic): ``env.py`` and ``versions/`` (one file per revision, ``0001`` the
baseline), run by :mod:`.schema` on a connection it opens (no ``alembic.ini``). docs/operations.md, "Upgrading",
says what happens when the controller starts; "Changing the schema" how to add a revision."""
