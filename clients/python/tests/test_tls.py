"""The client over mutual TLS, with a CA made here by openssl."""
import subprocess

import grpc
import pytest

from conftest import serve

LEAF_EXTENSIONS = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={}\n"


def _openssl(directory, *args):
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _leaf(directory, name, usage):
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (directory / f"{name}.ext").write_text(LEAF_EXTENSIONS.format(usage))
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign")
    _leaf(directory, "server", "serverAuth")
    _leaf(directory, "client", "clientAuth")
    return directory


def test_the_client_works_over_mutual_tls_and_a_stranger_is_refused(pki):
    from batch_history_client import BatchHistory
    env = {"TLS_CERT_FILE": str(pki / "server.pem"), "TLS_KEY_FILE": str(pki / "server.key"),
           "TLS_CLIENT_CA_FILE": str(pki / "ca.pem")}
    healthcheck = ["--tls-ca-file", str(pki / "ca.pem"), "--tls-cert-file",
                   str(pki / "client.pem"), "--tls-key-file", str(pki / "client.key"),
                   "--tls-server-name", "localhost"]
    with serve(env, healthcheck) as server:
        addr = server.addr
        root = (pki / "ca.pem").read_bytes()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes())
        client = BatchHistory(addr, channel=grpc.secure_channel(addr, credentials), attempts=1)
        try:
            batch_id = client.start(model="m")
            client.progress(batch_id, samples=3)
            assert client.get(batch_id)["samples_generated"] == 3
        finally:
            client.close()

        stranger = BatchHistory(
            addr, channel=grpc.secure_channel(addr, grpc.ssl_channel_credentials(root)),
            attempts=1, timeout=2.0)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                stranger.get("any")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            stranger.close()
