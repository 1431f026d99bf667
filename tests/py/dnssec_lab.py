"""A DNSSEC lab for the DANE tests, made at test start.

* ``SignedKnot``: a ``knotd`` on 127.0.0.1:<free port> serving the zone ``lab.`` and its
  children. Keys are made with ``keymgr`` before knotd starts (ed25519 CSKs, manual key
  policy), so the DS records of the signed children are written into ``lab.`` at once and knot
  signs every zone on load (``dnssec-signing: on``). A child listed in ``bogus_ds`` gets a DS
  that matches none of its keys: all its answers are bogus. A child in ``unsigned`` is
  delegated without DS: insecure. ``anchor_file`` holds the DNSKEY records of ``lab.``, the
  trust anchor Postern validates from (``[dns] trust_anchor``); ``ds_file`` the same anchor
  as the DS records of ``lab.``'s KSK (``keymgr ds``: SHA-256 and SHA-384). With
  ``split_keys``, ``lab.`` gets a KSK and a ZSK instead of one CSK (knot's default
  policy): the KSK signs only the DNSKEY RRset; ``ksk_file`` holds the KSK's DNSKEY alone.
* ``LabCa`` / ``self_signed``: certificates made with ``openssl`` for the receivers: a lab CA
  (for DANE-TA) issuing leaf certificates, and self-signed ones (for DANE-EE).
* ``tlsa_digest``: the association data of a TLSA ``U 1 1`` record (SHA2-256 of the SPKI) or
  ``U 0 1`` (of the whole certificate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import subprocess
from pathlib import Path

from support import CertPair, free_port, run, stop_process, wait_until


# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------
def _openssl(*args, input: bytes | None = None) -> bytes:
    r = subprocess.run(["openssl", *map(str, args)], capture_output=True, input=input,
                       timeout=30)
    assert r.returncode == 0, f"openssl {args[0]} failed: {r.stderr.decode()}"
    return r.stdout


def self_signed(directory: Path, name: str) -> CertPair:
    """A self-signed EC certificate for DNS ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=DNS:{name}", "-keyout", key, "-out", cert)
    return CertPair(cert, key)


class LabCa:
    """A CA certificate and key; ``issue`` makes leaf certificates whose cert file holds the
    leaf followed by the CA (the chain a DANE-TA server presents)."""

    def __init__(self, directory: Path, name: str = "Postern Lab CA"):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.cert, self.key = directory / "ca.crt", directory / "ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "3", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-keyout", self.key, "-out", self.cert)

    def issue(self, dns_name: str) -> CertPair:
        key, csr = self.dir / f"{dns_name}.key", self.dir / f"{dns_name}.csr"
        leaf, chain = self.dir / f"{dns_name}.leaf.crt", self.dir / f"{dns_name}.crt"
        ext = self.dir / f"{dns_name}.ext"
        ext.write_text(f"subjectAltName=DNS:{dns_name}\nextendedKeyUsage=serverAuth\n"
                       "basicConstraints=CA:FALSE\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-subj", f"/CN={dns_name}", "-keyout", key, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", leaf)
        chain.write_bytes(leaf.read_bytes() + self.cert.read_bytes())
        return CertPair(chain, key)


def tlsa_digest(cert: Path, selector: int = 1) -> str:
    """Hex SHA2-256 of the first certificate's SPKI (selector 1) or DER (selector 0)."""
    der = _openssl("x509", "-in", cert, "-outform", "DER")
    if selector == 1:
        pub = _openssl("x509", "-in", cert, "-pubkey", "-noout")
        der = _openssl("pkey", "-pubin", "-outform", "DER", input=pub)
    return hashlib.sha256(der).hexdigest()


def server_context(pair: CertPair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


# ---------------------------------------------------------------------------------------------
# Signed zones
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SignedKnot:
    """knotd serving ``lab.`` (signed) and its ``children`` (name relative to ``lab.`` ->
    records relative to the child's origin). Children in ``unsigned`` get no keys and no DS;
    children in ``bogus_ds`` get a DS that matches none of their keys. A child name may have
    several labels (``_tcp.mx.x`` under ``x``): its delegation then goes into the closest
    listed parent child."""

    workdir: Path
    children: dict[str, list[str]]
    unsigned: set[str] = dataclasses.field(default_factory=set)
    bogus_ds: set[str] = dataclasses.field(default_factory=set)
    split_keys: bool = False

    def __post_init__(self):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.workdir / "knot.conf"
        self.anchor_file = self.workdir / "trust-anchor.keys"
        self.ds_file = self.workdir / "trust-anchor.ds"
        self.ksk_file = self.workdir / "trust-anchor.ksk"
        self.log = self.workdir / "knotd.log"

    @property
    def zones(self) -> list[str]:
        return ["lab."] + [f"{c}.lab." for c in self.children]

    def signed(self, zone: str) -> bool:
        return zone == "lab." or zone.removesuffix(".lab.") not in self.unsigned

    def _keymgr(self, zone: str, *args: str) -> str:
        r = run(["keymgr", "-c", self.conf, zone, *args], timeout=30)
        assert r.returncode == 0, f"keymgr {zone} {args}: {r.stdout}{r.stderr}"
        return r.stdout

    def _parent(self, child: str) -> str:
        """The zone a child is delegated from: the longest listed suffix, else ``lab.``."""
        labels = child.split(".")
        for i in range(1, len(labels)):
            if ".".join(labels[i:]) in self.children:
                return ".".join(labels[i:]) + ".lab."
        return "lab."

    def start(self) -> SignedKnot:
        for sub in ("run", "db", "kasp", "zones"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        conf = [
            "server:", f"    listen: 127.0.0.1@{self.port}",
            f"    rundir: {self.workdir / 'run'}",
            "database:", f"    storage: {self.workdir / 'db'}",
            f"    kasp-db: {self.workdir / 'kasp'}",
            "log:", "  - target: stderr", "    any: info",
            "policy:", "  - id: lab", "    algorithm: ed25519", "    manual: on",
            "template:", "  - id: default", f"    storage: {self.workdir / 'zones'}",
            '    file: "%s.zone"',
            "zone:",
        ]
        for zone in self.zones:
            conf.append(f"  - domain: {zone}")
            if self.signed(zone):
                conf += ["    dnssec-signing: on", "    dnssec-policy: lab"]
        self.conf.write_text("\n".join(conf) + "\n")

        ds: dict[str, list[str]] = {}
        for zone in self.zones:
            if self.signed(zone) and zone == "lab." and self.split_keys:
                self._keymgr(zone, "generate", "algorithm=ed25519", "ksk=yes", "zsk=no")
                self._keymgr(zone, "generate", "algorithm=ed25519", "ksk=no", "zsk=yes")
            elif self.signed(zone):
                self._keymgr(zone, "generate", "algorithm=ed25519", "ksk=yes", "zsk=yes")
            if self.signed(zone):
                ds[zone] = [line for line in self._keymgr(zone, "ds").splitlines()
                            if " DS " in line and " 15 2 " in line]
        self.anchor_file.write_text(self._keymgr("lab.", "dnskey"))
        self.ds_file.write_text(self._keymgr("lab.", "ds"))
        self.ksk_file.write_text("".join(
            line + "\n" for line in self.anchor_file.read_text().splitlines()
            if " DNSKEY 257 " in line))

        records: dict[str, list[str]] = {"lab.": []}
        for child, recs in self.children.items():
            records.setdefault(f"{child}.lab.", []).extend(recs)
        for child in self.children:
            zone, parent = f"{child}.lab.", self._parent(child)
            records[parent].append(f"{zone} IN NS ns.lab.")
            if child in self.bogus_ds:
                records[parent].append(f"{zone} IN DS 4711 15 2 " + "00" * 32)
            elif self.signed(zone):
                records[parent].extend(ds[zone])
        records["lab."].append("ns IN A 127.0.0.1")
        for zone, recs in records.items():
            soa = [f"$ORIGIN {zone}", "$TTL 60",
                   f"@ IN SOA ns.lab. hostmaster.lab. 1 3600 600 86400 60", "@ IN NS ns.lab."]
            (self.workdir / "zones" / f"{zone.rstrip('.')}.zone").write_text(
                "\n".join(soa + recs) + "\n")

        self.proc = subprocess.Popen(["knotd", "-c", str(self.conf)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def all_served():
            if self.proc.poll() is not None:
                raise AssertionError(f"knotd exited: {self.log.read_text()[-2000:]}")
            return all(self.query(z, "DNSKEY" if self.signed(z) else "SOA") for z in self.zones)

        wait_until(all_served, 20, "knotd to serve the signed lab zones", interval=0.05)
        return self

    def query(self, name: str, rtype: str) -> list[str]:
        r = run(["kdig", "@127.0.0.1", "-p", str(self.port), rtype, name,
                 "+short", "+time=1", "+retry=0"], timeout=10)
        return [line for line in r.stdout.splitlines() if line and not line.startswith(";")]

    def stop(self):
        stop_process(self.proc)
