"""Dovecot 2.3's defaults for the settings import-dovecot maps, and why the others stay behind.

:data:`DEFAULTS` are Dovecot 2.3.19's (Debian 12), checked against ``doveconf -a`` by the
tests: ``doveconf -n`` leaves a setting out when it has its default, so the import needs them.
:data:`REASONS` is what the report says for a setting mailslot has no equivalent of.
"""

from __future__ import annotations

#: Dovecot 2.3.19's defaults for the settings mapped here (``doveconf -a``).
DEFAULTS: dict[str, str] = {
    "protocols": "",  # Debian builds: each dovecot-*d package adds its protocol
    "listen": "*, ::",
    "ssl": "yes",
    "ssl_min_protocol": "TLSv1.2",
    "disable_plaintext_auth": "yes",
    "auth_username_format": "%Lu",
    "auth_mechanisms": "plain",
    "auth_failure_delay": "2 secs",
    "mail_location": "",
    "pop3_uidl_format": "%08Xu%08Xv",
    "pop3_reuse_xuidl": "no",
    "pop3_no_flag_updates": "no",
    "pop3_deleted_flag": "",
    "pop3_lock_session": "no",
    "pop3_client_workarounds": "",
    "pop3_logout_format": "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s",
    "mail_max_userip_connections": "10",
    "hostname": "",
    "base_dir": "/run/dovecot",
    "haproxy_trusted_networks": "",
}

#: mailslot's own defaults for the agreed settings the import writes only when they differ.
LOGOUT_FORMAT = DEFAULTS["pop3_logout_format"]
WORKAROUNDS = ("outlook-no-nuls", "oe-ns-eoh")
TEXT_SCHEMES = ("CRYPT", "ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT")
LEGACY_SCHEMES = ("MD5-CRYPT", "MD5")

#: Why a setting has no mailslot equivalent, for the ones sites commonly set.
REASONS: dict[str, str] = {
    "base_dir": "Dovecot's runtime directory; mailslot keeps no such directory",
    "state_dir": "Dovecot's state directory; mailslot keeps no such directory",
    "log_path": "mailslot logs to stderr (journald under systemd), docs/configuration.md [log]",
    "info_log_path": "mailslot logs to stderr (journald under systemd)",
    "debug_log_path": "mailslot logs to stderr (journald under systemd)",
    "syslog_facility": "mailslot logs to stderr (journald under systemd)",
    "login_greeting": "mailslot's greeting is not configurable",
    "first_valid_uid": "mailslot does not switch to per-user uids; [server] user serves all",
    "last_valid_uid": "mailslot does not switch to per-user uids; [server] user serves all",
    "first_valid_gid": "mailslot does not switch to per-user gids; [server] group serves all",
    "last_valid_gid": "mailslot does not switch to per-user gids; [server] group serves all",
    "mail_privileged_group": "only for mbox dotlocks in /var/mail, which mailslot does not use",
    "default_internal_user": "Dovecot's own unprivileged account; mailslot uses [server] user",
    "default_login_user": "Dovecot's own login account; mailslot uses [server] user",
    "ssl_cipher_list": "mailslot's ciphers follow Mozilla's profile ([tls] profile)",
    "ssl_cipher_suites": "no equivalent; [tls] profile chooses the TLS settings",
    "ssl_curve_list": "no equivalent; [tls] profile chooses the TLS settings",
    "ssl_prefer_server_ciphers": "no equivalent; [tls] profile chooses the TLS settings",
    "ssl_dh": "mailslot offers ECDHE only; no DH parameters are needed",
    "ssl_options": "no equivalent; mailslot always turns TLS compression off",
    "ssl_ca": "mailslot does not ask clients for certificates",
    "ssl_verify_client_cert": "mailslot does not ask clients for certificates",
    "ssl_client_ca_dir": "mailslot does not ask clients for certificates",
    "ssl_client_ca_file": "mailslot does not ask clients for certificates",
    "ssl_key_password": "mailslot reads unencrypted keys: decrypt the key file (and keep it 0600)",
    "ssl_cert_username_field": "mailslot does not ask clients for certificates",
    "auth_verbose": "no equivalent; mailslot logs each failed login at info level",
    "auth_verbose_passwords": "mailslot never logs passwords",
    "auth_debug": 'use [log] level = "debug"',
    "auth_debug_passwords": "mailslot never logs passwords",
    "mail_debug": 'use [log] level = "debug"',
    "verbose_ssl": 'use [log] level = "debug"',
    "auth_cache_size": "no equivalent; mailslot re-reads a passwd-file when it changes",
    "auth_cache_ttl": "no equivalent; mailslot re-reads a passwd-file when it changes",
    "auth_worker_max_count": "use [auth] verify_pool",
    "mail_plugins": "mailslot has no plugins",
    "pop3_enable_last": "LAST left POP3 with RFC 1725; mailslot has none",
    "pop3_fast_size_lookups": "no equivalent; mailslot reads sizes from the Maildir itself",
    "pop3_save_uidl": "no equivalent setting; mailslot sends the UIDLs saved in dovecot-uidlist",
    "pop3_uidl_duplicates": "no equivalent setting",
    "pop3_delete_type": "mailslot expunges (or, with deleted_flag, flags) as Dovecot's default",
    "mailbox_list_index": "mailslot reads no Dovecot index files",
    "maildir_very_dirty_syncs": "mailslot reads no Dovecot index files",
    "mmap_disable": "mailslot reads no Dovecot index files",
    "mail_fsync": "no equivalent; mailslot's fsyncs are not configurable",
    "lock_method": "mailslot locks dovecot-uidlist with Dovecot's dotlock",
    "import_environment": "set the environment in the service manager",
    "shutdown_clients": "mailslot ends sessions on shutdown after [server] shutdown_timeout",
    "mail_max_userip_connections": "the maildrop lock allows one session per user "
    "(pop3_lock_session = yes)",
}


SERVICE_SETTING = "mailslot's processes are [server] workers and its limits [limits]"
NOT_INET = "mailslot listens on TCP sockets only"
SECTION_REASONS = {
    "service": "a Dovecot process; mailslot has no equivalent",
    "namespace": "IMAP namespaces; POP3 serves the INBOX only",
    "plugin": "mailslot has no plugins",
    "dict": "mailslot has no dict lookups",
}
SERVICE_REASONS = {
    "pop3": "mailslot's processes are [server] workers; limits are in [limits]",
    "auth": "Dovecot's auth service; see [auth]",
}
