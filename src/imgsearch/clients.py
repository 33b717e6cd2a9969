"""Who a client is: the one rule that the trust model of votes and the rate limits share.

A client is a source address, as the network delivered it:
- the socket peer's address (behind API Gateway, Mangum puts the request context's
  `http.sourceIp` there, which API Gateway takes from the connection, not from a header);
- `X-Forwarded-For` only when the peer is a configured trusted proxy, and then the right-most
  entry that is not itself a trusted proxy: entries left of it were written by the client and
  prove nothing;
- IPv6 addresses grouped by their /64, because one subscriber gets a whole /64 and could
  otherwise be a new client per address; 6to4 and Teredo addresses as the IPv4 address they
  carry. (Someone holding a /48, such as a tunnel broker's, still has many /64s: the quorum of
  agreeing clients is a bar an attacker with three networks can pass, docs/reliability.md.)

What is stored is never the address: it is a keyed hash of it (HMAC-SHA256 with a server secret,
shortened), so a leaked table does not list visitors' addresses, and the owner can still name a
client by its id or, through `ClientIds.of`, by its address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from imgsearch.integrity import secret_file
from imgsearch.storage import PreconditionFailed, Table

CLIENT_SECRET_FILE = "client-secret"
CLIENT_ID_PATTERN = r"^c[0-9a-f]{20}$"
UNKNOWN_ADDRESS = "unknown"  # no peer address at all (an in-process test client without one)
IPV6_SUBSCRIBER_PREFIX = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def source_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The address a request came from: the peer, or behind trusted proxies the right-most
    X-Forwarded-For entry that is not a trusted proxy. `forwarded_for` holds every
    X-Forwarded-For header value (repeated headers are one list, in order)."""
    if not peer:
        return UNKNOWN_ADDRESS
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    entries = [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]
    for entry in reversed(entries):
        if _parse(entry) is None:
            return peer  # garbage a trusted proxy would not write: trust nothing past it
        if not _is_trusted(entry, trusted):
            return entry
    return entries[0] if entries else peer


def client_network(address: str) -> str:
    """The address as a client: IPv4 as it is, IPv6 by its /64 (IPv4-mapped IPv6 as IPv4)."""
    parsed = _parse(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        # IPv6 that carries an IPv4 address is that address: otherwise one IPv4 host would
        # be a whole /48 (6to4) or any number of clients (Teredo).
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        if parsed.sixtofour is not None:
            return str(parsed.sixtofour)
        if parsed.teredo is not None:
            return str(parsed.teredo[1])
        network = ipaddress.IPv6Network((parsed, IPV6_SUBSCRIBER_PREFIX), strict=False)
        return str(network)
    return str(parsed)


class ClientIds:
    """Client ids: keyed hashes of client addresses."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def of(self, address: str) -> str:
        digest = hmac.new(self._key, client_network(address).encode(), hashlib.sha256)
        return "c" + digest.hexdigest()[:20]


def is_client_id(text: str) -> bool:
    return re.fullmatch(CLIENT_ID_PATTERN, text) is not None


def is_address(text: str) -> bool:
    return _parse(text) is not None


def client_secret(configured: str | None, data_dir: Path | None, table: Table) -> str:
    """The secret client ids are made with: the setting if given, else the data directory's
    client-secret file (local), else a secret kept in the feedback table (cloud); the last two
    are created on first use, by whichever process gets there first."""
    if configured:
        return configured
    if data_dir is not None:
        return secret_file(
            Path(data_dir) / CLIENT_SECRET_FILE,
            lambda: secrets.token_hex(32),
            what="the client secret file",
            fix="delete it to have a new one made (votes then count as from new clients), "
            "or set IMGSEARCH_CLIENT_SECRET",
        )[0]
    return _table_secret(table)


def _table_secret(table: Table) -> str:
    """The secret in the feedback table's `config / client-secret` row (storage/layout.md)."""
    item = table.get("config", "client-secret")
    if item is None:
        with suppress(PreconditionFailed):  # another instance made it first: use theirs
            table.put(
                "config", "client-secret", {"secret": secrets.token_hex(32)}, expected_version=0
            )
        item = table.get("config", "client-secret")
    assert item is not None
    return str(item["secret"])


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    parsed = _parse(address)
    return parsed is not None and any(parsed in network for network in trusted)
