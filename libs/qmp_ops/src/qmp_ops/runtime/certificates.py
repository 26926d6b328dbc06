"""The embedded stack's TLS: a certificate authority made per run, and a server certificate it signs.

The CA's private key lives only in memory while the certificates are issued, so nothing on disk can sign
another certificate that clients of this run would trust. Clients trust the CA file and nothing else
(`qmp_core.bus.client_tls`, `sslrootcert=` in the database URL); the servers present the certificate
for 127.0.0.1 and localhost. A production stack takes its certificates from files named in its
environment instead (docs/SECURITY.md).
"""

from dataclasses import dataclass
from pathlib import Path

import trustme

from qmp_ops.runtime.ports import write_private

HOSTS = ("127.0.0.1", "localhost")  # the embedded servers listen on loopback only


@dataclass(frozen=True)
class ServerCertificates:
    ca_file: Path  # what clients trust
    cert_file: Path  # the server's certificate (and the chain up to the CA)
    key_file: Path  # its private key, readable by the owner only

    @classmethod
    def issue(cls, directory: Path, hosts: tuple[str, ...] = HOSTS) -> "ServerCertificates":
        """Return the certificates under `directory`, making a new CA and certificate there if absent.

        A restarted server of the same run (the chaos suite stops and restarts them) finds its files
        again, so the clients' trust in the run's CA holds across the restart.
        """
        certificates = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        if all(path.exists() for path in (certificates.ca_file, certificates.cert_file, certificates.key_file)):
            return certificates
        directory.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA(organization_name="QMP embedded stack")
        issued = authority.issue_cert(*hosts)
        write_private(certificates.key_file, issued.private_key_pem.bytes().decode())
        certificates.cert_file.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        authority.cert_pem.write_to_path(str(certificates.ca_file))
        return certificates
