"""``cryptoface admin tenant-create | tenants | api-key-create | api-key-revoke | audit``: the operator's verbs.

The admin key comes from ``--admin-key-file`` (mode 0600) or ``$CRYPTOFACE_ADMIN_KEY``, read by the same function
the server uses; it is sent as a bearer token to ``/v1/admin/...`` routes only, never saved by ``login``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptoface.errors import CryptoFaceError


def register(sub: Any) -> None:
    p = sub.add_parser("admin", help="operator: create tenants, issue and revoke API keys (admin key required)")
    verbs = p.add_subparsers(dest="verb", required=True)
    q = verbs.add_parser("tenant-create", help="create a tenant; prints its id")
    q.add_argument("name")
    _admin_args(q)
    q.set_defaults(func=cmd_tenant_create)
    q = verbs.add_parser("tenants", help="list the tenants")
    _admin_args(q)
    q.set_defaults(func=cmd_tenants)
    q = verbs.add_parser("api-key-create", help="issue an API key for TENANT_ID; the token is printed once")
    q.add_argument("tenant_id")
    _admin_args(q)
    q.set_defaults(func=cmd_api_key_create)
    q = verbs.add_parser("api-key-revoke", help="revoke the API key KEY_ID (the 12 hex characters after 'cf_')")
    q.add_argument("key_id")
    _admin_args(q)
    q.set_defaults(func=cmd_api_key_revoke)
    q = verbs.add_parser("audit", help="every tenant's audit log (ids and actions, no names)")
    q.add_argument("--after", type=int, default=0, help="only rows after this id")
    _admin_args(q)
    q.set_defaults(func=cmd_audit)


def _admin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="file holding the admin key (mode 0600); default $CRYPTOFACE_ADMIN_KEY")
    p.add_argument("--server", default=None,
                   help="server URL (default $CRYPTOFACE_SERVER, else the saved one, else http://127.0.0.1:8000)")
    p.add_argument("--ca-cert", type=Path, default=None, help="PEM certificate to trust (default $CRYPTOFACE_CA_CERT)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow the admin key over plain http:// to another machine (a network you trust)")
    p.add_argument("--home", type=Path, default=None, help="where 'cryptoface login' saved the server URL")


def _admin(args: argparse.Namespace) -> Any:
    from cryptoface.client.http import AdminClient
    from cryptoface.client.settings import resolve_settings
    from cryptoface.service.auth import ADMIN_KEY_ENV, load_admin_key

    key = load_admin_key(args.admin_key_file)
    if key is None:
        raise CryptoFaceError(f"no admin key: pass --admin-key-file PATH or set ${ADMIN_KEY_ENV}")
    s = resolve_settings(args.server, None, args.ca_cert, args.home)
    return AdminClient(s.server, key, ca_cert=s.ca_cert, insecure_http=args.insecure_http)


def cmd_tenant_create(args: argparse.Namespace) -> int:
    with _admin(args) as a:
        t = a.create_tenant(args.name)
    print(f"tenant {t['tenant_id']} ({t['name']}); issue it a key: cryptoface admin api-key-create {t['tenant_id']}")
    return 0


def cmd_tenants(args: argparse.Namespace) -> int:
    with _admin(args) as a:
        for t in a.tenants():
            print(f"{t['tenant_id']}\t{t['name']}")
    return 0


def cmd_api_key_create(args: argparse.Namespace) -> int:
    with _admin(args) as a:
        k = a.create_api_key(args.tenant_id)
    print(f"api key {k['key_id']} for tenant {k.get('tenant_id', args.tenant_id)} (shown once; the server keeps "
          "only its hash):")
    print(k["token"])
    return 0


def cmd_api_key_revoke(args: argparse.Namespace) -> int:
    with _admin(args) as a:
        a.revoke_api_key(args.key_id)
    print(f"revoked api key {args.key_id}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from cryptoface.cli.service_cmd import print_audit

    with _admin(args) as a:
        print_audit(a.audit(args.after))
    return 0
