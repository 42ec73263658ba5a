"""TLS for mailslot: the policy of the contexts (:mod:`.context`), certificate loading and
checks shared by ``check-config``, ``serve`` and reloads (:mod:`.certificates`), the choice
of a certificate by the name a client asks for (:mod:`.sni`, RFC 6066 section 3) and the
watch on the certificate files for an automatic reload (:mod:`.watch`)."""
