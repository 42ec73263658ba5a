"""Reading a Dovecot 2.3 configuration and carrying it over to mailslot (``import-dovecot``).

:mod:`.parser` reads dovecot.conf syntax (sections, ``!include``, ``$variables``, ``<file``
values) into a tree; :mod:`.source` gets that text from ``doveconf -n`` where Dovecot is
installed, else from the files; :mod:`.mapping` turns the tree into mailslot settings and a
list of what it could not carry over; :mod:`.render` writes the TOML.
"""
